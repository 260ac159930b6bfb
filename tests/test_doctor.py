"""``avatarforcing doctor --json`` on this machine: one JSON object, every check complete,
a fix for everything not ok, and the exit status rule (non-zero only when a check fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import CheckResult
from avatarforcing.plugin.app.config import AppConfig
from avatarforcing.plugin.app.doctor import DoctorContext, check_torch, nvidia_gpus, run_doctor
from avatarforcing.plugin.builtins.sinks.diagnostics import check_display
from avatarforcing.plugin.host import build_plugin_host

EXPECTED_CHECKS = {
    "python",
    "torch",
    "cuda",
    "tensorrt",
    "onnxruntime",
    "pyav",
    "weights",
    "audio devices",
    "loopback capture",
    "virtual camera",
    "display",
    "default avatar",
    "obs",
    "ffmpeg",
    "plugins",
}


def _doctor_json(tmp_path: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AVATARFORCING_")}
    env.update(AVATARFORCING_WEIGHTS=str(tmp_path / "no-weights"), **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "avatarforcing.plugin", "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_doctor_json_on_this_machine(tmp_path: Path):
    result = _doctor_json(tmp_path)
    report = json.loads(result.stdout)  # exactly one JSON object on stdout
    checks = report["checks"]
    assert {c["name"] for c in checks} >= EXPECTED_CHECKS
    for check in checks:
        assert set(check) == {"name", "status", "detail", "fix"}, check
        assert check["status"] in ("ok", "warn", "fail") and check["detail"], check
        if check["status"] != "ok":
            assert check["fix"], f"no fix for {check}"
    summary = report["summary"]
    assert summary == {s: sum(c["status"] == s for c in checks) for s in ("ok", "warn", "fail")}
    assert result.returncode == (1 if summary["fail"] else 0), result.stderr
    by_name = {c["name"]: c for c in checks}
    assert by_name["python"]["status"] == "ok" and sys.version.split()[0] in by_name["python"]["detail"]
    import torch

    assert torch.__version__ in by_name["torch"]["detail"]
    if not torch.cuda.is_available() and torch.version.cuda is None and not nvidia_gpus():
        assert by_name["cuda"]["status"] == "warn" and "CPU-only" in by_name["cuda"]["detail"]
    # the official weights are optional: missing ones warn, never fail
    assert by_name["weights"]["status"] == "warn"


def test_display_check_follows_the_environment():
    if not sys.platform.startswith("linux"):
        assert check_display({}).status == "ok"
        return
    without = check_display({})
    assert without.status == "warn" and "Xvfb" in without.fix
    with_x = check_display({"DISPLAY": ":42"})
    assert with_x.status == "ok" and "DISPLAY=:42" in with_x.detail


def test_cpu_torch_on_a_machine_with_an_nvidia_gpu_fails_with_the_fix(tmp_path: Path, monkeypatch):
    """The driver's GPU list comes from `nvidia-smi -L`; a real driver cannot exist on CPU CI
    machines, so a script prints the driver's listing format."""
    import torch

    if torch.version.cuda is not None:
        return  # a CUDA build: the rule under test is about the CPU build
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0000)'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert nvidia_gpus() == ["NVIDIA H100 80GB HBM3"]
    cuda = {c.name: c for c in check_torch(DoctorContext(AppConfig()))}["cuda"]
    assert cuda.status == "fail" and "NVIDIA H100 80GB HBM3" in cuda.detail and "CPU-only" in cuda.detail
    assert "download.pytorch.org/whl/cu" in cuda.fix


def test_exit_status_is_non_zero_only_on_fail():
    class Warns:
        @hookimpl
        def doctor_checks(self):
            return [CheckResult("extra warning", "warn", "degraded", "do this")]

    class Fails:
        @hookimpl
        def doctor_checks(self):
            return [CheckResult("extra failure", "fail", "broken", "do that")]

    warn_host = build_plugin_host(environ={}, load_entry_points=False, plugins=[Warns()])
    warned = run_doctor(AppConfig(), warn_host, environ={})
    assert {"warn"} <= {c.status for c in warned.checks}
    assert warned.exit_code == (1 if any(c.status == "fail" for c in warned.checks) else 0)
    fail_host = build_plugin_host(environ={}, load_entry_points=False, plugins=[Fails()])
    failed = run_doctor(AppConfig(), fail_host, environ={})
    assert failed.exit_code == 1
    assert any(c.name == "extra failure" for c in failed.checks)


def test_report_exit_code_counts_fail_only():
    from avatarforcing.plugin.app.doctor import DoctorReport

    ok, warn, fail = (CheckResult(s, s, "detail", "" if s == "ok" else "fix") for s in ("ok", "warn", "fail"))
    assert DoctorReport([ok, warn]).exit_code == 0
    assert DoctorReport([ok, warn, fail]).exit_code == 1
    assert DoctorReport([ok, warn, fail]).to_dict()["summary"] == {"ok": 1, "warn": 1, "fail": 1}
