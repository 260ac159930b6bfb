"""Diagnostics of the live sinks, for ``avatarforcing doctor`` (the ``live_sinks`` plugin's
``doctor_checks``): what this machine offers each sink, then each sink in ``sinks.use`` checked
with its own options.

- ``virtual camera``: pyvirtualcam and a v4l2loopback device (Linux) or its OS backends;
- ``display``: a display for the preview window;
- ``obs``: obs-websocket's port reachable;
- ``sink NAME`` for each sink in use: the same, stricter (a sink in use that cannot start fails),
  with its options (a free port, a writable recording folder, a logged-in OBS).
"""

from __future__ import annotations

import importlib
import os
import platform
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from avatarforcing.plugin.api.types import CheckResult
from avatarforcing.plugin.builtins.sinks.live import OBS_PASSWORD_ENV, display_problem

OBS_DEFAULT_HOST = "127.0.0.1"
OBS_DEFAULT_PORT = 4455
OBS_TIMEOUT_S = 0.5


# -- what the machine offers -------------------------------------------------------------------
def v4l2_loopback_devices() -> list[tuple[str, str]]:
    """(device path, card label) of the v4l2loopback devices: video4linux devices that are
    virtual (no hardware parent)."""
    base = Path("/sys/devices/virtual/video4linux")
    if not base.is_dir():
        return []
    found = []
    for entry in sorted(base.iterdir()):
        name_file = entry / "name"
        found.append((f"/dev/{entry.name}", name_file.read_text().strip() if name_file.is_file() else ""))
    return found


def check_virtual_camera() -> CheckResult:
    """pyvirtualcam and, on Linux, v4l2loopback devices; elsewhere pyvirtualcam's backends."""
    try:
        pyvirtualcam = importlib.import_module("pyvirtualcam")
    except Exception as error:
        return CheckResult(
            "virtual camera",
            "warn",
            f"pyvirtualcam not importable ({type(error).__name__}); the virtual-camera sink is "
            "unavailable (other sinks still work)",
            "pip install pyvirtualcam (GPL-2.0)",
        )
    version = getattr(pyvirtualcam, "__version__", "?")
    if not sys.platform.startswith("linux"):
        return _virtual_camera_backends(pyvirtualcam, version)
    devices = [path + (f" ({label})" if label else "") for path, label in v4l2_loopback_devices()]
    if devices:
        return CheckResult("virtual camera", "ok", f"pyvirtualcam {version}; v4l2loopback: " + ", ".join(devices))
    configured = Path("/etc/modprobe.d/avatarforcing-v4l2loopback.conf").is_file()
    detail = f"pyvirtualcam {version}, but no v4l2loopback device (/dev/video*) exists"
    if configured:
        detail += " (installer settings present; the module is not loaded, e.g. inside a container)"
    return CheckResult(
        "virtual camera",
        "warn",
        detail,
        "bash installer/install.sh --virtual-camera (v4l2loopback-dkms, exclusive_caps=1, loaded at boot), "
        'or: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="Avatar Forcing"',
    )


def _virtual_camera_backends(pyvirtualcam: Any, version: str) -> CheckResult:
    """Windows/macOS: pyvirtualcam's backends (each needs its driver: OBS or Unity Capture)."""
    backends = sorted(getattr(getattr(pyvirtualcam, "camera", None), "BACKENDS", {}) or {})
    listing = ", ".join(backends) or "none"
    if sys.platform == "win32":
        needs = "'obs' needs OBS 26+ (start and stop its virtual camera once); 'unitycapture' needs Unity Capture"
        fix = "install OBS Studio (installer\\install.ps1 -VirtualCamera) or Unity Capture"
    else:
        needs = "'obs' needs OBS 30+ with its camera extension allowed (start and stop the virtual camera once)"
        fix = "brew install --cask obs (bash installer/install.sh --virtual-camera), start its virtual camera once"
    if not backends:
        return CheckResult("virtual camera", "warn", f"pyvirtualcam {version} has no backend on this system", fix)
    return CheckResult("virtual camera", "ok", f"pyvirtualcam {version}; backends: {listing}; {needs}")


def check_display(environ: Mapping[str, str]) -> CheckResult:
    """A display for the preview window (Linux: X11 or Wayland; Windows/macOS always have one)."""
    if not sys.platform.startswith("linux"):
        return CheckResult("display", "ok", f"{platform.system()} desktop")
    shown = [f"{name}={environ[name]}" for name in ("DISPLAY", "WAYLAND_DISPLAY") if environ.get(name)]
    if shown:
        return CheckResult("display", "ok", "preview window can open on " + ", ".join(shown))
    return CheckResult(
        "display",
        "warn",
        "no DISPLAY or WAYLAND_DISPLAY: no preview window (virtual camera, OBS and file sinks still work)",
        "run from a desktop session, or start a virtual one: Xvfb :99 & export DISPLAY=:99",
    )


def _obs_address(config: Any) -> tuple[str, int]:
    options = config.sinks.options_for("obs")
    host = options.get("host", OBS_DEFAULT_HOST)
    try:
        port = int(options.get("port", OBS_DEFAULT_PORT))
    except (TypeError, ValueError):
        port = OBS_DEFAULT_PORT
    return str(host), port


def check_obs(config: Any) -> CheckResult:
    """Is obs-websocket's port open (a TCP connect; the ``obs`` sink in use also logs in)?"""
    host, port = _obs_address(config)
    try:
        with socket.create_connection((host, port), timeout=OBS_TIMEOUT_S):
            pass
    except OSError as error:
        reason = (
            "connection refused"
            if isinstance(error, ConnectionRefusedError)
            else ("timed out" if isinstance(error, TimeoutError) else str(error))
        )
        return CheckResult(
            "obs",
            "warn",
            f"obs-websocket not reachable at {host}:{port} ({reason}); OBS is not running or "
            "its WebSocket server is off",
            "start OBS 28+ and enable Tools > WebSocket Server Settings > Enable (port 4455), "
            "only needed for the OBS sink",
        )
    return CheckResult("obs", "ok", f"obs-websocket port open at {host}:{port}")


# -- the sinks in use ---------------------------------------------------------------------------
def _check_virtual_camera(options: Any) -> CheckResult:
    from avatarforcing.integrations.virtual_camera import VirtualCameraError, default_backend, setup_hint

    try:
        import pyvirtualcam
    except ImportError:
        return CheckResult(
            "sink virtual-camera",
            "fail",
            "pyvirtualcam is not installed",
            "pip install 'avatarforcing[vcam]' (GPL-2.0)",
        )
    try:
        backend = str(options.get("backend", "")) or default_backend()
    except VirtualCameraError as error:
        return CheckResult("sink virtual-camera", "fail", str(error), "use the mjpeg or obs sink instead")
    if backend not in pyvirtualcam.camera.BACKENDS:
        return CheckResult(
            "sink virtual-camera",
            "fail",
            f"backend {backend!r} is not available here",
            f"choose one of {', '.join(sorted(pyvirtualcam.camera.BACKENDS))}",
        )
    if backend == "v4l2loopback":
        device = str(options.get("device", ""))
        found = [path for path, _label in v4l2_loopback_devices()]
        if (device and device not in found) or not found:
            missing = f"device {device} is not a v4l2loopback device" if device else "no v4l2loopback device"
            return CheckResult(
                "sink virtual-camera", "fail", f"{missing} (found: {', '.join(found) or 'none'})", setup_hint(backend)
            )
        return CheckResult("sink virtual-camera", "ok", f"v4l2loopback: {', '.join(found)}")
    return CheckResult("sink virtual-camera", "ok", f"backend {backend}; needs: {setup_hint(backend)}")


def _check_obs(options: Any) -> CheckResult:
    from avatarforcing.integrations.obs_control import ObsClient, ObsError

    host, port = str(options.get("host", "127.0.0.1")), int(options.get("port", 4455))
    password = str(options.get("password", "")) or os.environ.get(OBS_PASSWORD_ENV, "")
    client = ObsClient(host, port, password, connect_timeout=0.8, request_timeout=0.5)
    try:
        version = client.connect().request("GetVersion")
    except ObsError as error:
        return CheckResult(
            "sink obs",
            "warn",
            str(error),
            "start OBS 28+, enable Tools > WebSocket Server Settings, and set the password "
            f"with ${OBS_PASSWORD_ENV} or sinks.obs.password",
        )
    finally:
        client.close()
    return CheckResult(
        "sink obs",
        "ok",
        f"OBS {version.get('obsVersion', '?')} at {host}:{port}, "
        f"obs-websocket {version.get('obsWebSocketVersion', '?')}, authenticated",
    )


def _check_mic_delay(options: Any) -> CheckResult:
    from avatarforcing.integrations import pulseaudio

    if not sys.platform.startswith("linux"):
        return CheckResult(
            "sink mic-delay",
            "ok",
            f"plays into {options.get('output', 'avatar_mic')!r}; "
            "install a virtual audio cable (VB-Cable, BlackHole) and name its playback side",
        )
    if pulseaudio.available():
        return CheckResult("sink mic-delay", "ok", "PulseAudio/PipeWire reachable (pactl info)")
    return CheckResult(
        "sink mic-delay",
        "fail",
        "no PulseAudio/PipeWire server reachable with pactl",
        "sudo apt-get install pulseaudio-utils libasound2-plugins, and run the desktop's sound server",
    )


def _check_port_free(name: str, host: str, port: int) -> CheckResult:
    if port == 0:
        return CheckResult(f"sink {name}", "ok", "serves on a free port chosen at start")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            return CheckResult(
                f"sink {name}",
                "fail",
                f"cannot listen on {host}:{port} ({error.strerror})",
                f"choose another port: --set sinks.{name}.port=N",
            )
    return CheckResult(f"sink {name}", "ok", f"{host}:{port} is free")


def sink_checks(config: Any, environ: Mapping[str, str] | None = None) -> list[CheckResult]:
    """The machine-level checks, then one for each sink in ``config.sinks.use``."""
    environ = os.environ if environ is None else environ
    results = [check_virtual_camera(), check_display(environ), check_obs(config)]
    for name in config.sinks.use:
        options = config.sinks.options_for(name)
        if name == "virtual-camera":
            results.append(_check_virtual_camera(options))
        elif name == "obs":
            results.append(_check_obs(options))
        elif name == "mjpeg":
            results.append(
                _check_port_free("mjpeg", str(options.get("host", "127.0.0.1")), int(options.get("port", 8090)))
            )
        elif name == "preview":
            problem = display_problem()
            results.append(
                CheckResult("sink preview", "fail", problem, "use the mjpeg sink and a browser")
                if problem
                else CheckResult("sink preview", "ok", "a display is available")
            )
        elif name == "mic-delay":
            results.append(_check_mic_delay(options))
        elif name == "recorder":
            folder = Path(str(options.get("path", "") or ".")).expanduser().resolve().parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            ok = os.access(folder, os.W_OK)
            results.append(
                CheckResult(
                    "sink recorder",
                    "ok" if ok else "fail",
                    f"{folder} is " + ("writable" if ok else "not writable"),
                    "" if ok else "choose another path: --set sinks.recorder.path=FILE.mp4",
                )
            )
    return results
