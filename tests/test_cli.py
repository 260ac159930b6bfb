"""The ``avatarforcing`` CLI: plugins, doctor, config, reference, bench, errors, entry points."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.cli import main
from avatarforcing.plugin.app.commands import builtin_commands
from avatarforcing.plugin.app.commands.reference import load_engine_function

PYTHON_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, tmp_path):
    """The CLI reads the environment: start every test from a known one."""
    for name in list(os.environ):
        if name.startswith("AVATARFORCING_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AVATARFORCING_WEIGHTS", str(tmp_path / "no-weights"))


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def subprocess_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARFORCING_")}
    env.update(extra)
    return env


# -- plugins -----------------------------------------------------------------------------------
def test_plugins_json_lists_builtins_with_hooks_and_provided_names(capsys):
    status, out, _ = run(capsys, "plugins", "--json")
    assert status == 0
    data = json.loads(out)
    plugins = {p["name"]: p for p in data["plugins"]}
    files = plugins["files"]
    assert files["module"] == "avatarforcing.plugin.builtins.sources.files"
    assert files["distribution"] == "avatarforcing"
    assert files["hooks"] == [
        "register_avatar_audio_sources",
        "register_avatar_video_sources",
        "register_user_audio_sources",
        "register_user_video_sources",
    ]
    assert files["provides"] == {
        "avatar_audio": ["audio-file", "silence"],
        "user_audio": ["audio-file", "silence"],
        "user_video": ["video-file"],
        "avatar_video": ["video-file"],
    }
    assert data["restricted_to"] is None and data["missing"] == [] and data["load_errors"] == {}


def test_plugins_table_and_restriction(capsys, monkeypatch):
    status, out, _ = run(capsys, "plugins")
    assert status == 0 and "files" in out and "video-file" in out
    monkeypatch.setenv("AVATARFORCING_PLUGINS", "nope")
    status, out, _ = run(capsys, "plugins", "--json")
    data = json.loads(out)
    assert status == 0 and data["plugins"] == [] and data["missing"] == ["nope"]
    assert data["restricted_to"] == ["nope"]
    status, out, _ = run(capsys, "plugins")
    assert "requested but not installed: nope" in out and "no plugins loaded" in out


# -- doctor ------------------------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def test_doctor_reports_this_machine_truthfully(capsys):
    import torch

    status, out, _ = run(capsys, "doctor", "--json")
    report = json.loads(out)
    checks = {c["name"]: c for c in report["checks"]}
    for check in report["checks"]:
        assert check["status"] in ("ok", "warn", "fail")
        assert check["detail"]
        assert (check["status"] == "ok") == (check["fix"] == ""), check
    assert report["summary"] == {s: sum(c["status"] == s for c in report["checks"]) for s in ("ok", "warn", "fail")}
    assert status == (1 if report["summary"]["fail"] else 0)

    assert checks["python"]["status"] == "ok"
    assert checks["torch"]["status"] == "ok" and torch.__version__ in checks["torch"]["detail"]
    assert (checks["cuda"]["status"] == "ok") == torch.cuda.is_available()
    assert (checks["tensorrt"]["status"] == "ok") == _importable("tensorrt")
    if not _importable("onnxruntime"):
        assert checks["onnxruntime"]["status"] == "warn"
    elif not torch.cuda.is_available():
        assert checks["onnxruntime"]["status"] == "ok" and "CPUExecutionProvider" in checks["onnxruntime"]["detail"]
    assert checks["pyav"]["status"] == "ok"
    camera = checks["virtual camera"]
    if not _importable("pyvirtualcam"):
        assert camera["status"] == "warn" and "pip install pyvirtualcam" in camera["fix"]
    elif sys.platform.startswith("linux"):
        loopbacks = Path("/sys/devices/virtual/video4linux")
        has_loopback = loopbacks.is_dir() and any(loopbacks.iterdir())
        assert (camera["status"] == "ok") == has_loopback
        assert has_loopback or "modprobe v4l2loopback" in camera["fix"]
    has_tools = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
    assert (checks["ffmpeg"]["status"] == "ok") == has_tools
    assert checks["weights"]["status"] == "warn"  # AVATARFORCING_WEIGHTS points at an empty place
    try:
        import sounddevice  # noqa: F401
    except OSError:  # PortAudio missing: a failed check with the apt fix
        assert checks["audio devices"]["status"] == "fail"
        if sys.platform.startswith("linux"):
            assert "apt-get install libportaudio2" in checks["audio devices"]["fix"]
    except ImportError:
        assert checks["audio devices"]["status"] == "fail"
        assert "pip install sounddevice" in checks["audio devices"]["fix"]
    else:
        assert checks["audio devices"]["status"] in ("ok", "warn")
    assert checks["loopback capture"]["status"] in ("ok", "warn")
    assert checks["plugins"]["status"] == "ok" and "files" in checks["plugins"]["detail"]


def test_doctor_table_output(capsys):
    status, out, _ = run(capsys, "doctor")
    for name in (
        "python",
        "torch",
        "cuda",
        "tensorrt",
        "onnxruntime",
        "weights",
        "audio devices",
        "loopback capture",
        "virtual camera",
        "obs",
        "ffmpeg",
        "plugins",
    ):
        assert name in out
    assert " ok, " in out and " warnings, " in out and " failed" in out
    assert status in (0, 1)


def test_doctor_obs_check_is_a_real_tcp_connect(capsys):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        _, out, _ = run(capsys, "doctor", "--json", "--set", f"sinks.obs.port={port}")
        obs = {c["name"]: c for c in json.loads(out)["checks"]}["obs"]
        assert obs["status"] == "ok" and f"127.0.0.1:{port}" in obs["detail"]
    finally:
        server.close()
    _, out, _ = run(capsys, "doctor", "--json", "--set", f"sinks.obs.port={port}")
    obs = {c["name"]: c for c in json.loads(out)["checks"]}["obs"]
    assert obs["status"] == "warn" and "not reachable" in obs["detail"]
    assert "WebSocket Server" in obs["fix"]


def test_doctor_weights_check(capsys, monkeypatch, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("AVATARFORCING_WEIGHTS", str(weights))

    def weights_check(*extra):
        _, out, _ = run(capsys, "doctor", "--json", *extra)
        return {c["name"]: c for c in json.loads(out)["checks"]}["weights"]

    check = weights_check()
    assert check["status"] == "warn" and str(weights / "flow_transformer.pth") in check["detail"]
    assert "avatarforcing weights fetch" in check["fix"]
    (weights / "flow_transformer.pth").write_bytes(b"x")
    check = weights_check()
    assert check["status"] == "fail" and "motion_autoencoder.pth" in check["detail"]
    (weights / "motion_autoencoder.pth").write_bytes(b"x")
    (weights / "wav2vec2-base-960h").mkdir()
    assert weights_check()["status"] == "ok"
    # [model] checkpoint_dir wins over the environment
    check = weights_check("--set", f"model.checkpoint_dir={tmp_path / 'elsewhere'}")
    assert check["status"] == "warn" and "elsewhere" in check["detail"]


# -- configuration through the CLI -------------------------------------------------------------
def test_config_errors_are_one_line_without_traceback(capsys, tmp_path):
    status, out, err = run(capsys, "--set", "model.nfe=abc", "config")
    assert status == 2 and out == ""
    assert err == "avatarforcing: error: model.nfe: expected an integer in [3, 1000], got 'abc'\n"

    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nnfe = [\n")
    status, _, err = run(capsys, "config", "-c", str(bad))
    assert status == 2 and err.count("\n") == 1 and "is not valid TOML" in err
    status, _, err = run(capsys, "-c", str(tmp_path / "missing.toml"), "doctor")
    assert status == 2 and err.count("\n") == 1 and "not found" in err
    status, _, err = run(capsys, "config", "--set", "model.colour=red")
    assert status == 2 and "Traceback" not in err and "model.colour: unknown option" in err

    status, _, err = run(capsys, "--debug", "--set", "model.nfe=abc", "config")
    assert status == 2 and "Traceback" in err and err.rstrip().endswith("got 'abc'")


def test_config_file_and_overrides_before_or_after_the_command(capsys, tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nnfe = 4\nthreads = 3\n")
    status, out, _ = run(capsys, "--set", "model.seed=5", "config", "--json", "-c", str(path), "--set", "model.nfe=6")
    data = json.loads(out)
    assert status == 0 and data["source_file"] == str(path)
    assert data["config"]["model"]["nfe"] == 6 and data["config"]["model"]["threads"] == 3
    assert data["config"]["model"]["seed"] == 5
    monkeypatch.setenv("AVATARFORCING_CONFIG", str(path))
    status, out, _ = run(capsys, "config")
    assert status == 0 and out.startswith(f"# from {path}\n") and "nfe = 4" in out


def test_usage_errors_and_version(capsys):
    status, _, err = run(capsys, "nope")
    assert status == 2 and "invalid choice: 'nope'" in err
    status, out, _ = run(capsys)
    assert status == 2 and "COMMAND" in out
    status, out, _ = run(capsys, "--version")
    assert status == 0 and out.startswith("avatarforcing ")
    status, _, err = run(capsys, "reference", "run", "somewhere")
    assert status == 2 and "--out" in err


# -- reference and bench -----------------------------------------------------------------------
def _engine_function(module: str, function: str):
    """The lead's engine entry point if this build has it, else the CLI's error."""
    try:
        return load_engine_function(module, function, "feature")
    except CommandError as error:
        assert importlib.util.find_spec(module) is None or not hasattr(importlib.import_module(module), function)
        assert "not available in this build" in str(error)
        return None


def test_reference_command_checks_its_arguments(capsys, tmp_path):
    status, _, err = run(capsys, "reference", "run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.npz"))
    assert status == 2 and err == f"avatarforcing: error: fixture directory {str(tmp_path / 'nowhere')!r} not found\n"
    (tmp_path / "fixture").mkdir()
    (tmp_path / "fixture" / "fixture_meta.json").write_text("{}")
    status, _, err = run(capsys, "reference", "run", str(tmp_path / "fixture"), "--out", str(tmp_path / "o.npz"))
    assert status == 2 and "inputs.npz" in err and "not found" in err
    status, _, err = run(capsys, "reference", "run", str(tmp_path / "fixture"), "--out", str(tmp_path / "no" / "o.npz"))
    assert status == 2
    run_reference = _engine_function("avatarforcing.engine.official.fixture_runner", "run_reference")
    assert run_reference is None or callable(run_reference)


def test_bench_command_validates_and_finds_the_engine(capsys):
    status, _, err = run(capsys, "bench", "--blocks", "0")
    assert status == 2 and err == "avatarforcing: error: --blocks: expected an integer in [1, 100000], got '0'\n"
    status, _, err = run(capsys, "bench", "--threads", "many")
    assert status == 2 and "model.threads: expected an integer" in err
    status, _, err = run(capsys, "bench", "--config", "gigantic")
    assert status == 2 and "model.preset: expected one of 'official', 'fixture_small'" in err
    run_benchmark = _engine_function("avatarforcing.engine.official.stage_bench", "run_benchmark")
    if run_benchmark is None:
        status, _, err = run(capsys, "bench", "--json", "--config", "fixture_small", "--blocks", "1")
        assert status == 1 and "the benchmark is not available in this build" in err
    else:
        assert callable(run_benchmark)


# -- commands, entry points, startup -----------------------------------------------------------
def test_builtin_commands_are_discovered():
    commands, errors = builtin_commands()
    assert errors == {}
    assert {"bench", "config", "doctor", "plugins", "reference"} <= {c.name for c in commands}


def test_building_the_cli_does_not_import_torch():
    code = (
        "import io, sys\n"
        "from avatarforcing.plugin.app.cli import build_parser, collect_commands\n"
        "from avatarforcing.plugin.host import build_plugin_host\n"
        "build_parser(collect_commands(build_plugin_host({'AVATARFORCING_PLUGINS': ''}), io.StringIO()))\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_console_script_and_module_entry_points():
    script = PYTHON_BIN / ("avatarforcing.exe" if os.name == "nt" else "avatarforcing")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable} (package not pip-installed)")
    done = subprocess.run([str(script), "plugins", "--json"], capture_output=True, text=True, env=subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "files" in {p["name"] for p in json.loads(done.stdout)["plugins"]}
    for module in ("avatarforcing.plugin", "avatarforcing.plugin.app.cli"):
        done = subprocess.run(
            [sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=subprocess_env()
        )
        assert done.returncode == 0 and done.stdout.startswith("avatarforcing "), done.stderr


def test_trace_environment_variable_in_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "avatarforcing.plugin", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(AVATARFORCING_TRACE="1"),
    )
    assert done.returncode == 0, done.stderr
    assert "register_avatar_audio_sources [hook]" in done.stderr
    assert "finish register_user_video_sources --> [[SourceSpec(name='video-file'" in done.stderr
    json.loads(done.stdout)  # tracing goes to stderr only
