"""Webcam capture with OpenCV: `Webcam` yields RGB frames ``(image uint8 (h, w, 3), timestamp s)``.

Opening fails with `WebcamError` (what was tried and what to check) when there is no camera.
A camera that stops delivering (unplugged) is reopened every `retry_s` seconds until `close()`;
meanwhile no frames are yielded.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

LOG = logging.getLogger("avatarforcing.webcam")


class WebcamError(RuntimeError):
    """No camera at that index, or it cannot be opened."""


@dataclass(frozen=True)
class WebcamSettings:
    """`index`: OpenCV camera index (0 = first); `width`/`height`/`fps`: requested mode (0 =
    the camera's default; cameras pick the nearest mode they support); `retry_s`: reopen delay
    after the camera stops delivering."""

    index: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    retry_s: float = 1.0


def _backend(cv2) -> int:
    if sys.platform == "win32":
        return cv2.CAP_DSHOW
    if sys.platform == "darwin":
        return cv2.CAP_AVFOUNDATION
    return cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY


def open_camera(settings: WebcamSettings):
    """An opened ``cv2.VideoCapture`` in the requested mode; `WebcamError` when there is none."""
    import cv2

    capture = cv2.VideoCapture(settings.index, _backend(cv2))
    if not capture.isOpened():
        capture.release()
        where = f"/dev/video{settings.index}" if sys.platform.startswith("linux") else f"camera {settings.index}"
        raise WebcamError(
            f"no camera at index {settings.index} ({where} cannot be opened): plug one in, check that "
            "no other program holds it and that this program may use the camera, or pick another "
            "index (avatarforcing devices lists them)"
        )
    for prop, value in (
        (cv2.CAP_PROP_FRAME_WIDTH, settings.width),
        (cv2.CAP_PROP_FRAME_HEIGHT, settings.height),
        (cv2.CAP_PROP_FPS, settings.fps),
    ):
        if value:
            capture.set(prop, float(value))
    return capture


def list_cameras(max_index: int = 4) -> list[int]:
    """Indices below `max_index` that open (Linux: only existing ``/dev/videoN`` are tried)."""
    import cv2

    found = []
    for index in range(max_index):
        if sys.platform.startswith("linux"):
            from pathlib import Path

            if not Path(f"/dev/video{index}").exists():
                continue
        capture = cv2.VideoCapture(index, _backend(cv2))
        if capture.isOpened():
            found.append(index)
        capture.release()
    return found


class Webcam:
    """Frames from one camera; `open()` raises `WebcamError` at once when there is none."""

    def __init__(
        self, settings: WebcamSettings, origin: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.origin = clock() if origin is None else origin
        self._closed = threading.Event()
        self._capture = None

    def open(self) -> Webcam:
        self._capture = open_camera(self.settings)
        return self

    def close(self) -> None:
        self._closed.set()

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        import cv2

        try:
            while not self._closed.is_set():
                if self._capture is None:
                    try:
                        self._capture = open_camera(self.settings)
                    except WebcamError:
                        self._closed.wait(self.settings.retry_s)
                        continue
                ok, image = self._capture.read()
                if not ok:
                    LOG.warning("camera %d stopped delivering frames; reopening", self.settings.index)
                    self._capture.release()
                    self._capture = None
                    continue
                yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB), self.clock() - self.origin
        finally:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
