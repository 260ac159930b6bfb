"""A private PulseAudio server for tests (see /work/shared/notes/real-components-audio-obs.md).

`PulseServer(workdir)` runs ``pulseaudio -n -F CONFIG --daemonize=no`` as a child process with
its own ``XDG_RUNTIME_DIR`` and ``HOME`` under `workdir`, one null sink ``meeting_out`` (the
"speaker" of a meeting app; its monitor ``meeting_out.monitor`` is the loopback) set as default
sink, and a silent keep-alive ``pacat`` stream so the idle null sink renders in small blocks.

- ``.env()``: the variables a client (``paplay``, ``pactl``, libpulse inside PortAudio) needs;
- ``.play(path)``: play a sound file into the default sink with ``paplay``;
- ``.kill()``: SIGKILL the server (a crash); ``.restart()``: start it again (same socket);
- ``.stop()``: terminate everything and wait; idempotent.

Skips the calling test (``pytest.skip``) when pulseaudio/pulseaudio-utils are not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SINK = "meeting_out"
_BINARIES = ("pulseaudio", "pactl", "pacat", "paplay")


class PulseServer:
    """One PulseAudio daemon with a null sink named `sink` at `rate` Hz, `channels` channels."""

    def __init__(self, workdir: Path, sink: str = SINK, rate: int = 48000, channels: int = 2) -> None:
        self.workdir = Path(workdir)
        self.sink, self.rate, self.channels = sink, rate, channels
        self.runtime_dir = self.workdir / "xdg"
        self.home = self.workdir / "home"
        self.config = self.workdir / "pulse-ci.pa"
        self.log = self.workdir / "pulseaudio.log"
        self.daemon: subprocess.Popen | None = None
        self.keepalive: subprocess.Popen | None = None

    # -- environment -----------------------------------------------------------------------
    @property
    def socket(self) -> Path:
        return self.runtime_dir / "pulse" / "native"

    def env(self) -> dict[str, str]:
        """Client variables: where the server is and where libpulse may keep its cookie."""
        return {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_COOKIE": str(self.home / "cookie"),
        }

    def _process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        env.update(self.env())
        env["HOME"] = str(self.home)
        return env

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> PulseServer:
        missing = [name for name in _BINARIES if shutil.which(name) is None]
        if missing:
            pytest.skip(f"{', '.join(missing)} not installed (apt-get install pulseaudio pulseaudio-utils)")
        self.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.runtime_dir, 0o700)
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "load-module module-native-protocol-unix auth-anonymous=1\n"
            f"load-module module-null-sink sink_name={self.sink} rate={self.rate} channels={self.channels}"
            " sink_properties=device.description=Meeting_Output\n"
            f"set-default-sink {self.sink}\n"
        )
        self.daemon = subprocess.Popen(
            [
                "pulseaudio",
                "-n",
                "-F",
                str(self.config),
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                f"--log-target=file:{self.log}",
            ],
            env=self._process_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                self.stop()
                raise RuntimeError(f"PulseAudio did not start (log tail):\n{log}")
            time.sleep(0.05)
        self.keepalive = subprocess.Popen(
            [
                "pacat",
                "--playback",
                "--raw",
                "--format=s16le",
                f"--rate={self.rate}",
                f"--channels={self.channels}",
                "--latency-msec=20",
                "--stream-name=keepalive",
                "/dev/zero",
            ],
            env=self._process_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def ready(self) -> bool:
        """True when the server answers ``pactl info``."""
        result = subprocess.run(["pactl", "info"], env=self._process_env(), capture_output=True, timeout=10)
        return result.returncode == 0

    def pactl(self, *args: str) -> str:
        """Run ``pactl ARGS`` against this server and return its stdout (raises on failure)."""
        return subprocess.run(
            ["pactl", *args], env=self._process_env(), capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def play(self, path: str | os.PathLike, wait: bool = True) -> subprocess.Popen:
        """Play `path` into the default sink; with ``wait`` block until it has been played."""
        process = subprocess.Popen(
            ["paplay", str(path)], env=self._process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if wait:
            _, err = process.communicate(timeout=120)
            if process.returncode != 0:
                raise RuntimeError(f"paplay {path} failed: {err.decode(errors='replace').strip()}")
        return process

    def kill(self) -> None:
        """SIGKILL the server (and the keep-alive stream) and wait for both: a crash."""
        for process in (self.daemon, self.keepalive):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
            if process is not None:
                process.wait()
        self.daemon = self.keepalive = None

    def restart(self) -> PulseServer:
        """Start a fresh server on the same socket (after `kill` or while running)."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Terminate the server and the keep-alive stream, wait; idempotent."""
        for process in (self.keepalive, self.daemon):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.daemon = self.keepalive = None

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
