"""Screen and window capture with `mss`: `ScreenCapture` yields RGB frames of a monitor, a fixed
region, or a window found by (a substring of) its title.

Window lookup per OS (`find_windows`):

- Linux/X11: ``xdotool search --onlyvisible --name`` (or ``xwininfo -root -tree`` without
  xdotool), then ``xwininfo -id`` for the absolute geometry; pure Wayland sessions are not
  supported by mss;
- Windows: ``EnumWindows``/``GetWindowTextW``/``GetWindowRect`` through `ctypes`;
- macOS: Quartz ``CGWindowListCopyWindowInfo`` (pyobjc-framework-Quartz) when importable.

A window that disappears is looked for again every `poll_s` seconds; meanwhile the capture
yields nothing, and it resumes when a window with that title reappears. The window's geometry
is refreshed every `relocate_s` seconds, so moved or resized windows are followed.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

LOG = logging.getLogger("avatarforcing.screen")
TOOL_TIMEOUT_S = 2.0


class ScreenCaptureError(ValueError):
    """Bad capture settings (region syntax, monitor index); the message says what to write."""


@dataclass(frozen=True)
class Region:
    """A rectangle in virtual-screen pixels: `left`, `top`, `width`, `height`."""

    left: int
    top: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Region:
        """``"x,y,w,h"`` (integers, width and height > 0) -> `Region`."""
        parts = [p.strip() for p in text.split(",")]
        try:
            left, top, width, height = (int(p) for p in parts)
        except ValueError:
            raise ScreenCaptureError(
                f"region {text!r} must be 'x,y,width,height' in pixels, e.g. '0,0,1280,720'"
            ) from None
        if width <= 0 or height <= 0:
            raise ScreenCaptureError(f"region {text!r}: width and height must be positive")
        return cls(left, top, width, height)

    def clip(self, bounds: Region) -> Region | None:
        """The part inside `bounds`, or ``None`` when they do not overlap."""
        left, top = max(self.left, bounds.left), max(self.top, bounds.top)
        right = min(self.left + self.width, bounds.left + bounds.width)
        bottom = min(self.top + self.height, bounds.top + bounds.height)
        if right <= left or bottom <= top:
            return None
        return Region(left, top, right - left, bottom - top)

    def as_mss(self) -> dict[str, int]:
        return {"left": self.left, "top": self.top, "width": self.width, "height": self.height}


@dataclass(frozen=True)
class WindowInfo:
    """A visible top-level window: platform `id`, `title`, on-screen `region`."""

    id: str
    title: str
    region: Region

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "left": self.region.left,
            "top": self.region.top,
            "width": self.region.width,
            "height": self.region.height,
        }


# -- window lookup -----------------------------------------------------------------------------------
def find_windows(title: str = "") -> list[WindowInfo]:
    """Visible windows whose title contains `title` (case-insensitive; ``""`` = all titled
    windows), largest first. ``[]`` when the platform's tools are unavailable."""
    if sys.platform.startswith("linux"):
        windows = _x11_windows(title)
    elif sys.platform == "win32":
        windows = _win32_windows(title)
    elif sys.platform == "darwin":
        windows = _quartz_windows(title)
    else:
        windows = []
    return sorted(windows, key=lambda w: -w.region.width * w.region.height)


def _run(args: list[str]) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def _x11_windows(title: str) -> list[WindowInfo]:
    if shutil.which("xwininfo") is None:
        return []
    if shutil.which("xdotool") is not None:
        pattern = _posix_regex_literal(title) if title else "."  # xdotool: POSIX ERE, case-insensitive
        ids = _run(["xdotool", "search", "--onlyvisible", "--name", pattern]).split()
    else:
        ids = re.findall(r"^\s*(0x[0-9a-f]+) \"", _run(["xwininfo", "-root", "-tree"]), re.MULTILINE)
    windows = []
    for window_id in dict.fromkeys(ids):
        info = _xwininfo(window_id)
        if info is not None and title.lower() in info.title.lower():
            windows.append(info)
    return windows


def _posix_regex_literal(text: str) -> str:
    return "".join("\\" + c if c in ".[]()*+?{}|^$\\" else c for c in text)


def _xwininfo(window_id: str) -> WindowInfo | None:
    text = _run(["xwininfo", "-id", window_id])
    if "IsViewable" not in text:
        return None
    name = re.search(r'Window id: \S+ "(.*)"\s*$', text, re.MULTILINE)
    values = {}
    for key, label in (
        ("left", "Absolute upper-left X"),
        ("top", "Absolute upper-left Y"),
        ("width", "Width"),
        ("height", "Height"),
    ):
        found = re.search(rf"^\s*{label}:\s*(-?\d+)", text, re.MULTILINE)
        if found is None:
            return None
        values[key] = int(found.group(1))
    if name is None or values["width"] <= 1 or values["height"] <= 1:
        return None
    return WindowInfo(window_id, name.group(1), Region(**values))


def _win32_windows(title: str) -> list[WindowInfo]:  # pragma: no cover - exercised on Windows only
    import ctypes
    from ctypes import wintypes

    user32 = ctypes.windll.user32
    try:
        user32.SetProcessDPIAware()  # physical pixels, like mss
    except Exception:
        pass
    found: list[WindowInfo] = []

    @ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.HWND, wintypes.LPARAM)
    def visit(hwnd, _):
        if not user32.IsWindowVisible(hwnd) or user32.IsIconic(hwnd):
            return True
        length = user32.GetWindowTextLengthW(hwnd)
        if length == 0:
            return True
        buffer = ctypes.create_unicode_buffer(length + 1)
        user32.GetWindowTextW(hwnd, buffer, length + 1)
        if title.lower() not in buffer.value.lower():
            return True
        rect = wintypes.RECT()
        if user32.GetWindowRect(hwnd, ctypes.byref(rect)):
            width, height = rect.right - rect.left, rect.bottom - rect.top
            if width > 1 and height > 1:
                found.append(WindowInfo(hex(hwnd or 0), buffer.value, Region(rect.left, rect.top, width, height)))
        return True

    user32.EnumWindows(visit, 0)
    return found


def _quartz_windows(title: str) -> list[WindowInfo]:  # pragma: no cover - exercised on macOS only
    try:
        import Quartz
    except ImportError:
        LOG.warning("window capture on macOS needs pyobjc-framework-Quartz (pip install pyobjc-framework-Quartz)")
        return []
    infos = Quartz.CGWindowListCopyWindowInfo(
        Quartz.kCGWindowListOptionOnScreenOnly | Quartz.kCGWindowListExcludeDesktopElements, Quartz.kCGNullWindowID
    )
    found = []
    for info in infos or ():
        name = str(info.get("kCGWindowName") or "")
        owner = str(info.get("kCGWindowOwnerName") or "")
        label = f"{owner} - {name}" if name else owner
        if not label or title.lower() not in label.lower() or info.get("kCGWindowLayer", 0) != 0:
            continue
        bounds = info.get("kCGWindowBounds") or {}
        width, height = int(bounds.get("Width", 0)), int(bounds.get("Height", 0))
        if width > 1 and height > 1:
            found.append(
                WindowInfo(
                    str(info.get("kCGWindowNumber", "")),
                    label,
                    Region(int(bounds.get("X", 0)), int(bounds.get("Y", 0)), width, height),
                )
            )
    return found


# -- monitors ----------------------------------------------------------------------------------------
def open_mss():
    """An mss screenshot object (mss 10: ``mss.MSS``; older: ``mss.mss``). Raises the backend's
    error when there is no display."""
    import mss

    factory = getattr(mss, "MSS", None) or mss.mss
    return factory()


def list_monitors() -> list[Region]:
    """Monitors as mss numbers them: index 0 is the whole virtual screen, 1.. each monitor;
    ``[]`` when no display can be opened."""
    try:
        with open_mss() as grabber:
            return [Region(m["left"], m["top"], m["width"], m["height"]) for m in grabber.monitors]
    except Exception:
        return []


# -- capture -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenSettings:
    """What to capture: `window_title` (substring; wins over the rest), else `region`
    (``"x,y,w,h"``), else monitor `monitor` (1 = first, 0 = all). `fps`: frames per second;
    `poll_s`: how often a missing window is looked for; `relocate_s`: how often a found window's
    geometry is refreshed."""

    window_title: str = ""
    region: str = ""
    monitor: int = 1
    fps: float = 25.0
    poll_s: float = 0.5
    relocate_s: float = 0.5

    def __post_init__(self) -> None:
        if self.region:
            Region.parse(self.region)
        if self.fps <= 0:
            raise ScreenCaptureError("fps must be positive")
        if self.monitor < 0:
            raise ScreenCaptureError("monitor must be 0 (all monitors) or 1, 2...")


class ScreenCapture:
    """Paced RGB frames ``(image uint8 (h, w, 3), timestamp s)`` from `frames()`.

    Timestamps are monotonic seconds since `origin` (default: construction). `close()` is
    idempotent and may be called from another thread; it ends `frames()` within one period.
    `window` is the window currently captured (``None`` while it is missing)."""

    def __init__(
        self,
        settings: ScreenSettings,
        origin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        finder: Callable[[str], list[WindowInfo]] = find_windows,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.origin = clock() if origin is None else origin
        self.finder = finder
        self.window: WindowInfo | None = None
        self.events: list[str] = []
        self._closed = threading.Event()
        self._next_lookup = 0.0
        self._fixed = Region.parse(settings.region) if settings.region else None

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        period = 1.0 / self.settings.fps
        grabber = None
        tick = self.clock()
        try:
            while not self._closed.is_set():
                if grabber is None:
                    grabber = self._open_grabber()
                image = self._grab(grabber) if grabber is not None else None
                if image is not None:
                    yield image, self.clock() - self.origin
                tick = max(tick + period, self.clock() - period)  # never burst after a stall
                wait = tick - self.clock()
                if image is None:
                    wait = max(wait, min(self.settings.poll_s, 0.1))
                if wait > 0:
                    self._closed.wait(wait)
        finally:
            if grabber is not None:
                grabber.close()

    # -- internals -------------------------------------------------------------------------------
    def _report(self, message: str) -> None:
        if not self.events or self.events[-1] != message:
            self.events.append(message)
            LOG.warning("screen capture: %s", message)

    def _open_grabber(self):
        try:
            return open_mss()
        except Exception as error:
            self._report(f"cannot open the display ({error}); retrying")
            self._closed.wait(self.settings.poll_s)
            return None

    def _target(self, grabber) -> Region | None:
        if self.settings.window_title:
            now = self.clock()
            if now >= self._next_lookup:
                self._lookup_window()
                self._next_lookup = now + (self.settings.relocate_s if self.window else self.settings.poll_s)
            return self.window.region if self.window else None
        if self._fixed is not None:
            return self._fixed
        monitors = grabber.monitors
        if self.settings.monitor >= len(monitors):
            raise ScreenCaptureError(
                f"monitor {self.settings.monitor} does not exist (monitors: 1..{len(monitors) - 1}, 0 = all)"
            )
        m = monitors[self.settings.monitor]
        return Region(m["left"], m["top"], m["width"], m["height"])

    def _lookup_window(self) -> None:
        windows = self.finder(self.settings.window_title)
        previous, self.window = self.window, (windows[0] if windows else None)
        if self.window is None and (previous is not None or not self.events):
            self._report(
                f"no window titled like {self.settings.window_title!r}; looking for it every {self.settings.poll_s:g} s"
            )
        elif self.window is not None and (previous is None or previous.id != self.window.id):
            self.events.append(f"capturing window {self.window.title!r} ({self.window.id})")

    def _grab(self, grabber) -> np.ndarray | None:
        import cv2

        region = self._target(grabber)
        if region is None:
            return None
        whole = grabber.monitors[0]
        region = region.clip(Region(whole["left"], whole["top"], whole["width"], whole["height"]))
        if region is None:
            return None
        try:
            shot = grabber.grab(region.as_mss())
        except Exception as error:  # the window vanished between lookup and grab, display gone...
            self._report(f"grab failed ({type(error).__name__}: {error}); retrying")
            self.window = None
            self._next_lookup = 0.0
            return None
        return cv2.cvtColor(np.asarray(shot), cv2.COLOR_BGRA2RGB)
