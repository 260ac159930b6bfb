"""A virtual webcam fed with RGB frames, through pyvirtualcam (GPL-2.0, optional extra ``vcam``).

The backend is always named explicitly: with ``backend=None`` pyvirtualcam tries every
registered backend in turn, so a test or third-party backend would silently become the
fallback. `default_backend()` names the one for this OS (Linux ``v4l2loopback``, Windows
``obs`` or ``unitycapture``, macOS ``obs``). Errors are `VirtualCameraError`s whose message
says how to install or enable the device.

`VirtualCameraStream` runs the camera on its own thread: `put(rgb)` hands over the newest
frame without blocking, and the thread sends one frame per camera period (repeating the last
frame when none came, so apps see a steady rate), paced by pyvirtualcam.
"""

from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np

from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.integrations.frame_handoff import LatestValue

log = logging.getLogger(__name__)

FORMATS = ("rgb", "bgr", "rgba")
OS_BACKENDS = {"linux": ("v4l2loopback",), "win32": ("obs", "unitycapture"), "darwin": ("obs",)}


class VirtualCameraError(RuntimeError):
    """The virtual camera cannot be opened or used; the message names the fix."""


def _pyvirtualcam():
    try:
        import pyvirtualcam
    except ImportError as error:
        raise VirtualCameraError(
            f"pyvirtualcam is not installed ({error}); pip install 'avatarforcing[vcam]' (pyvirtualcam is GPL-2.0)"
        ) from error
    return pyvirtualcam


def _platform() -> str:
    return "linux" if sys.platform.startswith("linux") else sys.platform


def default_backend(platform: str | None = None) -> str:
    """The pyvirtualcam backend to use on `platform` (default: this OS)."""
    platform = platform or _platform()
    if platform not in OS_BACKENDS:
        raise VirtualCameraError(f"no virtual-camera backend is known for platform {platform!r}")
    return OS_BACKENDS[platform][0]


def setup_hint(backend: str) -> str:
    """How to make `backend`'s device exist."""
    if backend == "v4l2loopback":
        return (
            "install and load v4l2loopback: sudo apt-get install v4l2loopback-dkms && sudo modprobe "
            'v4l2loopback devices=1 exclusive_caps=1 card_label="AvatarForcing" (see docs/sinks.md)'
        )
    if backend == "obs" and _platform() == "darwin":
        return (
            "install OBS Studio 30 or newer and start then stop its virtual camera once "
            "(installs the camera extension; allow it in System Settings)"
        )
    if backend == "obs":
        return "install OBS Studio 26 or newer (includes OBS Virtual Camera) and keep OBS's own virtual camera stopped"
    if backend == "unitycapture":
        return "install Unity Capture (run its Install.bat as administrator), then restart the meeting app"
    return f"see the documentation of the {backend!r} pyvirtualcam backend"


@dataclass(frozen=True)
class CameraSettings:
    """What to open: `width` x `height` pixels at `fps`, input format `fmt` (rgb/bgr/rgba),
    pyvirtualcam `backend` ("" = `default_backend()`), `device` ("" = the backend's first)."""

    width: int
    height: int
    fps: float = 25.0
    fmt: str = "rgb"
    backend: str = ""
    device: str = ""

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise VirtualCameraError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.fmt not in FORMATS:
            raise VirtualCameraError(f"camera format must be one of {', '.join(FORMATS)}, got {self.fmt!r}")
        if not 0 < self.fps <= 120:
            raise VirtualCameraError(f"camera fps must be in (0, 120], got {self.fps}")


def convert_frame(image: np.ndarray, width: int, height: int, fmt: str) -> np.ndarray:
    """RGB/RGBA uint8 ``(h, w, 3|4)`` -> C-contiguous ``(height, width, 3|4)`` in `fmt`,
    resized with area/linear interpolation when the size differs."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB/RGBA uint8 (h, w, 3|4) image, got {image.dtype} {image.shape}")
    if image.shape[:2] != (height, width):
        shrinking = image.shape[0] > height or image.shape[1] > width
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    channels = image.shape[2]
    if fmt == "rgb":
        out = flatten_rgba(image)
    elif fmt == "bgr":
        out = cv2.cvtColor(flatten_rgba(image), cv2.COLOR_RGB2BGR)
    else:
        out = image if channels == 4 else cv2.cvtColor(image, cv2.COLOR_RGB2RGBA)
    return np.ascontiguousarray(out)


def open_camera(settings: CameraSettings):
    """Open a `pyvirtualcam.Camera` with an explicit backend; `VirtualCameraError` with the fix."""
    pyvirtualcam = _pyvirtualcam()
    backend = settings.backend or default_backend()
    known = sorted(pyvirtualcam.camera.BACKENDS)
    if backend not in known:
        raise VirtualCameraError(
            f"unknown virtual-camera backend {backend!r}; available here: {', '.join(known) or 'none'}"
        )
    pixel_format = {
        "rgb": pyvirtualcam.PixelFormat.RGB,
        "bgr": pyvirtualcam.PixelFormat.BGR,
        "rgba": pyvirtualcam.PixelFormat.RGBA,
    }[settings.fmt]
    try:
        return pyvirtualcam.Camera(
            settings.width,
            settings.height,
            settings.fps,
            fmt=pixel_format,
            device=settings.device or None,
            backend=backend,
        )
    except Exception as error:  # pyvirtualcam joins each backend's failure into one RuntimeError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        device = f" device {settings.device!r}" if settings.device else ""
        raise VirtualCameraError(
            f"cannot open the virtual camera ({backend}{device}, {settings.width}x{settings.height} "
            f"{settings.fmt}): {reason}; fix: {setup_hint(backend)}"
        ) from error


class VirtualCameraStream:
    """Feeds a virtual camera from its own thread at the camera's fps.

    `start()` opens the camera (raising `VirtualCameraError`); `put(rgb)` never blocks;
    `close()` stops the thread and releases the device. `frames_sent` counts frames handed to
    the device (repeats included); `error` holds the message if the device failed mid-stream.
    """

    def __init__(self, settings: CameraSettings) -> None:
        self.settings = settings
        self.frames: LatestValue[np.ndarray] = LatestValue()
        self.frames_sent = 0
        self.error = ""
        self.device = ""
        self._camera = None
        self._thread: threading.Thread | None = None

    def start(self) -> VirtualCameraStream:
        self._camera = open_camera(self.settings)
        self.device = str(self._camera.device)
        log.info(
            "virtual camera %s (%s) open: %dx%d %s at %g fps",
            self.device,
            self._camera.backend,
            self.settings.width,
            self.settings.height,
            self.settings.fmt,
            self.settings.fps,
        )
        self._thread = threading.Thread(target=self._run, name="virtual-camera", daemon=True)
        self._thread.start()
        return self

    def put(self, image: np.ndarray) -> None:
        """Hand over the newest RGB/RGBA frame; converted on the camera thread."""
        self.frames.put(image)

    def _run(self) -> None:
        camera, settings = self._camera, self.settings
        sequence, image = self.frames.wait_newer(0, None)
        converted = None
        try:
            while not self.frames.closed and image is not None:
                newest, image = self.frames.peek()
                if converted is None or newest != sequence:
                    converted = convert_frame(image, settings.width, settings.height, settings.fmt)
                    sequence = newest
                camera.send(converted)
                self.frames_sent += 1
                camera.sleep_until_next_frame()
        except Exception as error:  # the device vanished (driver unloaded, app closed the pipe)
            self.error = f"{type(error).__name__}: {error}"
            log.error("virtual camera stopped: %s", self.error)

    def close(self) -> None:
        """Stop sending and release the device; idempotent."""
        self.frames.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._camera is not None:
            self._camera.close()
            self._camera = None
