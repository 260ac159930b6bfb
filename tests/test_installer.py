"""The installer (installer/install.sh) and the CI entry point (.ci/run).

The dry-run tests run the real script on a copy of the repository's install files in a
temporary directory, so the checkout and its .venv are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALL_SH = REPO_ROOT / "installer" / "install.sh"
INSTALL_PS1 = REPO_ROOT / "installer" / "install.ps1"
CI_RUN = REPO_ROOT / ".ci" / "run"
README = REPO_ROOT / "README.md"

STEP_TITLES = ["[1/5] python", "[2/5] venv", "[3/5] torch", "[4/5] package", "[5/5] system"]
OPTIONAL_FLAGS = ("--virtual-camera", "--audio-loopback", "--tensorrt", "--weights")
# What the live-session tests start for real (PulseAudio, OBS under Xvfb, espeak-ng voices...).
LIVE_SESSION_APT = [
    "pulseaudio",
    "pulseaudio-utils",
    "libportaudio2",
    "libasound2-plugins",
    "alsa-utils",
    "sox",
    "espeak-ng",
    "obs-studio",
    "obs-plugins",
    "chromium",
    "chromium-driver",
    "xvfb",
    "xauth",
    "libgl1-mesa-dri",
    "libegl1",
    "mesa-utils",
    "x11-utils",
    "xdotool",
    "wmctrl",
    "ffmpeg",
    "shellcheck",
]


def _clean_env(**extra: str) -> dict[str, str]:
    """The current environment without the installer's own variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARFORCING_")}
    env.update(extra)
    return env


def _env_torch_source_fixed(**extra: str) -> dict[str, str]:
    """As _clean_env, with the torch source fixed to pip's own indexes: for tests about other
    steps, this skips the installer's local-wheel probe (a pip run of a few seconds)."""
    return _clean_env(AVATARFORCING_TORCH_INDEX="pypi", **extra)


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    """A minimal repository root holding what the installer reads."""
    (tmp_path / "installer").mkdir()
    shutil.copy2(INSTALL_SH, tmp_path / "installer" / "install.sh")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime (ns)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run_installer(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(root / "installer" / "install.sh"), *args],
        cwd=root,
        env=env if env is not None else _clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _fake_nvidia_smi(bin_dir: Path, cuda_version: str) -> None:
    """An `nvidia-smi` printing a driver header: no GPU can be real on CPU machines."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text(
        f"#!/bin/sh\necho '| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: {cuda_version}  |'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_shellcheck_passes_on_install_and_ci_scripts():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip(
            "shellcheck is not installed (install.sh installs it with the test extra: apt-get install shellcheck)"
        )
    result = subprocess.run([shellcheck, str(INSTALL_SH), str(CI_RUN)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_every_step_torch_first_and_changes_nothing(repo_copy: Path):
    before = _snapshot(repo_copy)
    result = _run_installer(repo_copy, "--dry-run", "--python", sys.executable)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr

    positions = [out.index(title) for title in STEP_TITLES]
    assert positions == sorted(positions), out
    lines = out.splitlines()
    torch_line = next(i for i, line in enumerate(lines) if "pip install" in line and "torch==2.13.0" in line)
    package_line = next(
        i
        for i, line in enumerate(lines)
        if "--config-settings editable_mode=compat --editable '.[face,export,test]'" in line
    )
    assert torch_line < package_line, out
    assert lines[torch_line].lstrip().startswith("[dry-run]")
    assert "-m venv .venv" in out
    # Nothing was executed: executed commands are printed with "+ ".
    assert not [line for line in lines if line.lstrip().startswith("+ ")], out
    assert "nothing was changed" in out
    assert _snapshot(repo_copy) == before
    assert not (repo_copy / ".venv").exists()


def test_dry_run_on_this_machine_uses_the_local_torch_wheel_without_an_index(repo_copy: Path):
    """Where pip's find-links hold the pinned CPU wheel (CI, dev boxes), no extra index is used."""
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-index",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "torch==2.13.0",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip("pip has no local torch==2.13.0 wheel here (no find-links with it)")
    result = _run_installer(repo_copy, "--dry-run", "--no-system", "--python", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
    torch_cmd = next(line for line in result.stdout.splitlines() if "pip install" in line and "torch==" in line)
    assert "--index-url" not in torch_cmd
    assert "local wheel" in result.stdout


@pytest.mark.parametrize(
    ("cuda_version", "tag"), [("12.6", "cu126"), ("12.8", "cu128"), ("12.9", "cu128"), ("13.0", "cu130")]
)
def test_nvidia_gpu_selects_the_cuda_build_the_driver_supports(repo_copy: Path, tmp_path: Path, cuda_version, tag):
    bin_dir = tmp_path / "fakebin"
    _fake_nvidia_smi(bin_dir, cuda_version)
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = _run_installer(repo_copy, "--dry-run", "--no-system", "--python", sys.executable, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"--index-url https://download.pytorch.org/whl/{tag}" in result.stdout


def test_too_old_nvidia_driver_fails_naming_the_step_and_the_fix(repo_copy: Path, tmp_path: Path):
    bin_dir = tmp_path / "fakebin"
    _fake_nvidia_smi(bin_dir, "11.8")
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = _run_installer(repo_copy, "--dry-run", "--python", sys.executable, env=env)
    assert result.returncode == 1
    assert 'ERROR in step "torch"' in result.stderr
    assert "CUDA 11.8" in result.stderr
    assert "How to fix:" in result.stderr


def test_torch_spec_and_index_can_be_overridden(repo_copy: Path):
    env = _clean_env(
        AVATARFORCING_TORCH_SPEC="torch==2.13.0+cpu", AVATARFORCING_TORCH_INDEX="https://example.invalid/whl/cpu"
    )
    result = _run_installer(repo_copy, "--dry-run", "--no-system", "--python", sys.executable, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install --no-input torch==2.13.0+cpu --index-url https://example.invalid/whl/cpu" in result.stdout


def test_extras_option_chooses_the_extras_and_the_system_packages(repo_copy: Path):
    env = _env_torch_source_fixed()
    result = _run_installer(
        repo_copy, "--dry-run", "--extras", "export", "--no-system", "--python", sys.executable, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--config-settings editable_mode=compat --editable '.[export]'" in result.stdout
    assert "skipped (--no-system)" in result.stdout
    assert "apt-get" not in result.stdout
    assert "shellcheck" not in result.stdout  # only the test extra needs it
    with_test = _run_installer(
        repo_copy, "--dry-run", "--extras", "test", "--no-system", "--python", sys.executable, env=env
    )
    assert "shellcheck" in with_test.stdout


def test_broken_venv_would_be_recreated_but_dry_run_keeps_it(repo_copy: Path):
    broken = repo_copy / ".venv" / "bin" / "python"
    broken.parent.mkdir(parents=True)
    broken.write_text("not a python\n")
    result = _run_installer(
        repo_copy, "--dry-run", "--no-system", "--python", sys.executable, env=_env_torch_source_fixed()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exists but does not work; recreating it" in result.stdout
    assert "[dry-run] rm -rf -- .venv" in result.stdout
    assert broken.read_text() == "not a python\n"


def test_healthy_venv_is_reused(repo_copy: Path):
    # --system-site-packages makes the base interpreter's pip importable without copying it.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(repo_copy / ".venv")], check=True
    )
    if subprocess.run([str(repo_copy / ".venv" / "bin" / "python"), "-c", "import pip"]).returncode != 0:
        pytest.skip("the base interpreter has no pip to share with a --without-pip venv")
    result = _run_installer(
        repo_copy, "--dry-run", "--no-system", "--python", sys.executable, env=_env_torch_source_fixed()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reusing" in result.stdout
    assert "-m venv" not in result.stdout


def _python_older_than_3_10() -> str | None:
    """A real, working Python 3.6-3.9 interpreter, if this machine has one."""
    pyenv_versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [str(p) for p in sorted(pyenv_versions.glob("3.[6-9].*/bin/python"), reverse=True)]
    candidates += [found for found in map(shutil.which, ("python3.9", "python3.8")) if found]
    for candidate in candidates:
        check = subprocess.run(
            [candidate, "-c", "import sys; sys.exit(0 if sys.version_info < (3, 10) else 1)"], capture_output=True
        )
        if check.returncode == 0:
            return candidate
    return None


def test_python_older_than_3_10_is_refused_with_a_clear_message(repo_copy: Path):
    old_python = _python_older_than_3_10()
    if old_python is None:
        pytest.skip("no Python older than 3.10 on this machine to try")
    result = _run_installer(repo_copy, "--dry-run", "--python", old_python)
    assert result.returncode == 1
    assert 'ERROR in step "python"' in result.stderr
    assert "too old" in result.stderr and "3.10 or newer" in result.stderr


def test_unknown_option_exits_2_with_usage(repo_copy: Path):
    result = _run_installer(repo_copy, "--frobnicate")
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr
    assert "Usage:" in result.stderr


def _readme_commands() -> tuple[str, str]:
    """(install-and-run command, test command) from README.md's two command blocks."""
    text = README.read_text()
    main_job = re.search(r"<!-- main-job -->\s*```bash\n(.+?)\n```", text, re.S)
    tests = re.search(r"## Run the tests\s*```bash\n(.+?)\n```", text, re.S)
    assert main_job and tests, "README.md must hold the main-job block and the test block"
    return main_job.group(1).strip(), tests.group(1).strip()


def test_ci_runs_the_readme_install_and_test_commands():
    main_job, test_command = _readme_commands()
    install_command = main_job.split("&&")[0].strip()
    ci_lines = [line.strip() for line in CI_RUN.read_text().splitlines() if not line.strip().startswith("#")]
    assert any(line.startswith(install_command) for line in ci_lines), (install_command, ci_lines)
    assert any(line.startswith(test_command) for line in ci_lines), (test_command, ci_lines)
    assert "rc == 5" in CI_RUN.read_text()  # pytest's "no tests collected" is handled


# -- optional steps ------------------------------------------------------------------------------
def test_dry_run_of_every_optional_step_prints_it_and_changes_nothing(repo_copy: Path):
    before = _snapshot(repo_copy)
    result = _run_installer(
        repo_copy,
        "--dry-run",
        "--no-system",
        *OPTIONAL_FLAGS,
        "--python",
        sys.executable,
        env=_env_torch_source_fixed(PATH=f"{repo_copy}/no-gpu{os.pathsep}{os.environ['PATH']}"),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    titles = [
        "[1/9] python",
        "[5/9] system",
        "[6/9] virtual-camera",
        "[7/9] audio-loopback",
        "[8/9] tensorrt",
        "[9/9] weights",
    ]
    positions = [out.index(title) for title in titles]
    assert positions == sorted(positions), out
    if sys.platform.startswith("linux"):
        assert 'options v4l2loopback devices=1 exclusive_caps=1 card_label="Avatar Forcing" video_nr=10' in out
        assert "/etc/modprobe.d/avatarforcing-v4l2loopback.conf" in out
        assert "/etc/modules-load.d/avatarforcing-v4l2loopback.conf" in out
        assert "Zoom" in out and "snap" in out
        assert "pactl list short sources" in out
    if shutil.which("nvidia-smi") is None:
        assert "skipped: no NVIDIA GPU" in out
    assert "[dry-run] .venv/bin/avatarforcing weights fetch" in out
    assert "[dry-run] .venv/bin/avatarforcing doctor" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("+ ")], out
    assert _snapshot(repo_copy) == before


def test_tensorrt_step_on_an_nvidia_machine_installs_from_nvidias_index_then_builds(repo_copy: Path, tmp_path: Path):
    bin_dir = tmp_path / "fakebin"
    _fake_nvidia_smi(bin_dir, "13.0")
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = _run_installer(repo_copy, "--dry-run", "--no-system", "--tensorrt", "--python", sys.executable, env=env)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "pip install --no-input --extra-index-url https://pypi.nvidia.com tensorrt-cu13" in out
    export = next(i for i, line in enumerate(out.splitlines()) if "avatarforcing graphs export" in line)
    build = next(i for i, line in enumerate(out.splitlines()) if "avatarforcing graphs build" in line)
    assert export < build


def test_video_nr_is_validated(repo_copy: Path):
    result = _run_installer(repo_copy, "--dry-run", "--virtual-camera", env=_clean_env(AVATARFORCING_VIDEO_NR="x"))
    assert result.returncode == 1
    assert "AVATARFORCING_VIDEO_NR must be a number" in result.stderr


def test_test_extra_lists_every_live_session_system_package(repo_copy: Path):
    result = _run_installer(
        repo_copy, "--dry-run", "--no-system", "--python", sys.executable, env=_env_torch_source_fixed()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    needs = next(line for line in result.stdout.splitlines() if "avatarforcing needs:" in line).split(":", 1)[1].split()
    assert set(LIVE_SESSION_APT) <= set(needs), set(LIVE_SESSION_APT) - set(needs)


# -- a real installation --------------------------------------------------------------------------
def _system_packages_present() -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    status = subprocess.run(["dpkg-query", "-W", "-f=${Status}\\n", *LIVE_SESSION_APT], capture_output=True, text=True)
    return status.returncode == 0 and all(line == "install ok installed" for line in status.stdout.splitlines())


@pytest.mark.slow
def test_real_install_in_a_scratch_copy_then_doctor(tmp_path: Path):
    """install.sh for real (CPU path) in a copy of the repository, then the new venv's doctor."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the CI run of install.sh is on Linux")
    root = tmp_path / "clone"
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.pyc", "*.egg-info", "tests", "docs")
    for name in ("engine", "plugin", "integrations", "schemas", "installer"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=ignore)
    shutil.copytree(REPO_ROOT / "avatarforcing", root / "avatarforcing", symlinks=True, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "THIRD_PARTY.md"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, root / name)
    args = ["--python", sys.executable] + ([] if not _system_packages_present() else ["--no-system"])
    env = _clean_env(PIP_NO_INPUT="1")
    install = subprocess.run(
        ["bash", str(root / "installer" / "install.sh"), *args],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert install.returncode == 0, install.stdout[-4000:] + install.stderr[-4000:]
    assert "==> installed into" in install.stdout
    assert "checking this machine: avatarforcing doctor" in install.stdout
    venv_python = root / ".venv" / "bin" / "python"
    imported = subprocess.run(
        [
            str(venv_python),
            "-c",
            "import avatarforcing.plugin, torch; print(avatarforcing.plugin.__file__, torch.__version__)",
        ],
        cwd=tmp_path,  # not this checkout: `python -c` imports the avatarforcing/ folder of its cwd first
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    assert str(root / "avatarforcing" / "plugin") in imported.stdout  # editable: the copy, not the checkout
    doctor = subprocess.run(
        [str(root / ".venv" / "bin" / "avatarforcing"), "doctor", "--json"],
        cwd=root,
        env=_clean_env(AVATARFORCING_WEIGHTS=str(tmp_path / "no-weights")),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(doctor.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["torch"]["status"] == "ok" and by_name["python"]["status"] == "ok"
    assert doctor.returncode == (1 if report["summary"]["fail"] else 0)
    again = _run_installer(root, "--dry-run", *args)  # idempotent: the healthy venv is reused
    assert again.returncode == 0 and "reusing" in again.stdout, again.stdout + again.stderr


# -- install.ps1 (no PowerShell here: a static check) -------------------------------------------
def _ps1_code(text: str) -> str:
    """The code of a PowerShell script without comments and string literals, keeping the code
    of ``$(...)`` subexpressions inside double-quoted strings (a small scanner, not a parser)."""
    out, stack, i = [], ["code"], 0  # stack of: "code", "sub" (code inside $( ) in a string), '"', "'"
    depth = [0]  # parenthesis depth per "sub" level
    while i < len(text):
        char, state = text[i], stack[-1]
        if state in ("code", "sub"):
            if text.startswith("<#", i):
                i = text.index("#>", i) + 2
                continue
            if char == "#":
                i = text.find("\n", i) if "\n" in text[i:] else len(text)
                continue
            if char in "\"'":
                stack.append(char)
            elif char == "`":
                i += 2
                continue
            else:
                if state == "sub":
                    if char == "(":
                        depth[-1] += 1
                    elif char == ")":
                        depth[-1] -= 1
                        if depth[-1] == 0:
                            stack.pop()
                            depth.pop()
                            out.append(char)
                            i += 1
                            continue
                out.append(char)
        elif state == "'":
            if text.startswith("''", i):
                i += 2
                continue
            if char == "'":
                stack.pop()
        else:  # double-quoted
            if char == "`":
                i += 2
                continue
            if text.startswith("$(", i):
                stack.append("sub")
                depth.append(1)
                out.append("(")
                i += 2
                continue
            if char == '"':
                stack.pop()
        i += 1
    assert stack == ["code"], f"unterminated {stack[-1]} at the end of the script"
    return "".join(out)


def test_install_ps1_is_balanced_has_every_step_and_matches_install_sh():
    """Limits: this is no PowerShell parser (none is installable on Debian); it checks bracket
    balance outside strings and comments, the param block, the steps and switches, and that
    the extras, torch pin, CUDA tags and indexes equal install.sh's. With the optional
    tree-sitter-powershell grammar installed, the whole file must also parse."""
    code = _ps1_code(INSTALL_PS1.read_text())
    for opening, closing in ("{}", "()", "[]"):
        depth = 0
        for char in code:
            depth += (char == opening) - (char == closing)
            assert depth >= 0, f"unbalanced {closing}"
        assert depth == 0, f"unbalanced {opening}{closing}"
    param = re.search(r"\[CmdletBinding\(\)\]\s*param\((.*?)\n\)", INSTALL_PS1.read_text(), re.S)
    assert param, "a [CmdletBinding()] param(...) block"
    for switch in ("DryRun", "NoSystem", "VirtualCamera", "AudioLoopback", "TensorRT", "Weights", "NoDoctor"):
        assert re.search(rf"\[switch\]\${switch}\b", param.group(1)), switch
    ps1 = INSTALL_PS1.read_text()
    for step in (
        "python",
        "venv",
        "torch",
        "package",
        "system",
        "virtual-camera",
        "audio-loopback",
        "tensorrt",
        "weights",
    ):
        assert f'Start-Step "{step}"' in ps1, step
    sh = INSTALL_SH.read_text()
    extras = re.search(r'DEFAULT_EXTRAS="([^"]+)"', sh).group(1)
    torch_spec = re.search(r'DEFAULT_TORCH_SPEC="([^"]+)"', sh).group(1)
    assert f'[string]$Extras = "{extras}"' in ps1
    assert f'$DefaultTorchSpec = "{torch_spec}"' in ps1
    for shared in (
        "https://download.pytorch.org/whl",
        "https://pypi.nvidia.com",
        "cu126",
        "cu128",
        "cu130",
        "AVATARFORCING_TORCH_SPEC",
        "AVATARFORCING_TORCH_INDEX",
        "OBS Virtual Camera",
        "Unity",
        "WASAPI",
        'weights", "fetch"',
        "doctor",
        "nvidia-smi",
        'py", "-$version',
    ):
        assert shared in ps1, shared
    try:
        import tree_sitter
        import tree_sitter_powershell
    except ImportError:
        return
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    assert not parser.parse(INSTALL_PS1.read_bytes()).root_node.has_error
