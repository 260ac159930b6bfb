"""A private X server for tests: `XvfbDisplay` starts ``Xvfb -displayfd`` (a free display number
chosen by the server itself, never a fixed one), exposes ``.display`` (``":5"``) and ``.env()``,
and stops and waits the process.

Use as a context manager, or start()/stop() from a fixture::

    with XvfbDisplay(width=1280, height=720) as xvfb:
        subprocess.Popen(["ffplay", ...], env={**os.environ, **xvfb.env()})

Skips the calling test (``pytest.skip``) when ``Xvfb`` is not installed.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time

import pytest


class XvfbDisplay:
    """One Xvfb server with a single screen of `width` x `height` x `depth`."""

    def __init__(self, width: int = 1280, height: int = 720, depth: int = 24, start_timeout: float = 15.0) -> None:
        self.width, self.height, self.depth = width, height, depth
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.display = ""

    def start(self) -> XvfbDisplay:
        if shutil.which("Xvfb") is None:
            pytest.skip("Xvfb is not installed (apt-get install xvfb xauth)")
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [
                    "Xvfb",
                    "-displayfd",
                    str(write_fd),
                    "-screen",
                    "0",
                    f"{self.width}x{self.height}x{self.depth}",
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ],
                pass_fds=(write_fd,),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            os.close(write_fd)
            write_fd = -1
            self.display = ":" + self._read_display_number(read_fd)
        except BaseException:
            self.stop()
            raise
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
        return self

    def _read_display_number(self, fd: int) -> str:
        deadline = time.monotonic() + self.start_timeout
        text = b""
        while not text.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                raise RuntimeError(
                    f"Xvfb did not report a display within {self.start_timeout} s (exit status {self.process.poll()})"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                data = os.read(fd, 64)
                if not data:
                    continue
                text += data
        return text.decode().strip()

    def env(self) -> dict[str, str]:
        """Variables that point X clients at this server."""
        return {"DISPLAY": self.display}

    def stop(self) -> None:
        """Terminate (then kill) the server and wait for it; idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> XvfbDisplay:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
