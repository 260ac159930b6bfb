"""``avatarforcing devices``: the real CLI against a private PulseAudio server and Xvfb."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from service_pulse import PulseServer
from service_xvfb import XvfbDisplay

CLI = [sys.executable, "-m", "avatarforcing.plugin"]


def devices(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "devices", *args], env=env, capture_output=True, text=True, timeout=60)


def test_devices_json_lists_the_monitor_as_loopback_and_windows(tmp_path):
    if shutil.which("ffplay") is None:
        pytest.skip("ffplay (ffmpeg) not installed")
    with PulseServer(tmp_path / "pulse") as pulse, XvfbDisplay(width=640, height=480) as xvfb:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")} | pulse.env() | xvfb.env()
        window = subprocess.Popen(
            [
                "ffplay",
                "-loglevel",
                "error",
                "-window_title",
                "Remote Face Call",
                "-f",
                "lavfi",
                "-i",
                "color=c=red:s=200x100",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                result = devices(env, "--json")
                assert result.returncode == 0, result.stderr
                found = json.loads(result.stdout)
                if any(w["title"] == "Remote Face Call" for w in found["windows"]) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            text = devices(env | {"COLUMNS": "200"})
        finally:
            window.kill()
            window.wait()
    inputs = {d["name"]: d for d in found["audio_inputs"]}
    monitor = inputs["meeting_out.monitor"]
    assert monitor["is_loopback"] and monitor["monitor_of"] == "meeting_out" and monitor["api"] == "pulse"
    assert not any(d["is_loopback"] for d in found["audio_outputs"])
    assert {"name": "meeting_out", "is_default": True}.items() <= next(
        d for d in found["audio_outputs"] if d["name"] == "meeting_out"
    ).items()
    [window_info] = [w for w in found["windows"] if w["title"] == "Remote Face Call"]
    assert (window_info["width"], window_info["height"]) == (200, 100)
    assert found["monitors"][0]["width"] == 640 and found["problems"] == []
    assert text.returncode == 0 and "meeting_out.monitor" in text.stdout
    assert "Remote Face Call" in text.stdout


def test_devices_without_sound_server_or_display_says_how_to_get_a_loopback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_") and k != "DISPLAY"}
    env["PULSE_SERVER"] = f"unix:{tmp_path}/no-server-here"
    result = devices(env, "--json")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["windows"] == [] and found["monitors"] == []
    assert not any(d["is_loopback"] for d in found["audio_inputs"])
    [problem] = [p for p in found["problems"] if "loopback" in p]
    assert "PulseAudio or PipeWire" in problem


def test_devices_is_a_builtin_command():
    from avatarforcing.plugin.app.commands import builtin_commands

    specs, errors = builtin_commands()
    assert "devices" in {s.name for s in specs} and not errors.get("avatarforcing.plugin.app.commands.devices")
