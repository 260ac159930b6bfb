"""Built-in plugin ``live_sources``: live audio/video inputs for sessions.

- avatar audio: ``microphone`` (any input device, sounddevice);
- user audio: ``loopback`` (what the speakers play: the remote participant's voice; Linux
  PulseAudio/PipeWire monitor, Windows WASAPI loopback, macOS BlackHole & co.) and
  ``microphone`` (a remote voice can come from any input);
- user video: ``screen`` (a window found by title, a region, or a monitor; mss) and ``webcam``;
- avatar video (your own face, for the ``mirror`` engine): ``webcam``.

Live audio sources never raise because the device went away: they yield nothing while it is
down (the session treats missing audio as silence) and reopen it in the background. Chunk
timestamps are monotonic seconds since the source was created. The screen source keeps looking
for a window that closed and resumes when it reappears. See docs/sources.md.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import AudioChunk, CheckResult, Frame, OptionSpec, SourceSpec

POLL_S = 0.1  # how often a blocked iterator looks at close()


# -- audio -------------------------------------------------------------------------------------------
class LiveAudioSource:
    """`AudioSource` over `avatarforcing.integrations.audio_capture.AudioCapture`: yields
    ``float32`` `AudioChunk`s (``(n,)`` mono or ``(n, channels)``) at `sample_rate`."""

    def __init__(self, settings) -> None:
        from avatarforcing.integrations.audio_capture import AudioCapture

        self.capture = AudioCapture(settings)

    def __iter__(self) -> Iterator[AudioChunk]:
        capture = self.capture.start()
        rate, mono = capture.settings.sample_rate, capture.settings.channels == 1
        index = 0
        while not capture.closed:
            block = capture.read(POLL_S)
            if block is None:
                continue
            samples = block.samples[:, 0] if mono else block.samples
            yield AudioChunk(samples, rate, block.timestamp, index)
            index += 1

    def close(self) -> None:
        self.capture.close()


def _sound_system_down() -> bool:
    """Linux with pactl but no server answering: device names cannot be checked now."""
    from avatarforcing.integrations import pulseaudio

    return sys.platform.startswith("linux") and shutil.which("pactl") is not None and not pulseaudio.available()


def _audio_factory(kind: str, loopback: bool):
    def create(device: str, sample_rate: int, channels: int, block_ms: int) -> LiveAudioSource:
        from avatarforcing.integrations.audio_capture import CaptureSettings
        from avatarforcing.integrations.audio_devices import AudioDeviceError, plan_input

        try:
            plan_input(device, loopback)
        except AudioDeviceError as error:
            # a missing server is an outage (the source waits for it), not a config mistake
            if not _sound_system_down():
                raise ConfigError(f"sources.{kind}.device", str(error)) from None
        settings = CaptureSettings(
            device=device, loopback=loopback, sample_rate=sample_rate, channels=channels, block_ms=block_ms
        )
        return LiveAudioSource(settings)

    return create


def _audio_options(device_help: str) -> tuple[OptionSpec, ...]:
    return (
        OptionSpec("device", str, "", device_help),
        OptionSpec(
            "sample_rate",
            int,
            48000,
            "capture rate in Hz (the session resamples to 16 kHz)",
            minimum=8000,
            maximum=192000,
        ),
        OptionSpec("channels", int, 1, "channels to capture (1 = mono chunks)", minimum=1, maximum=32),
        OptionSpec("block_ms", int, 20, "capture block length in milliseconds", minimum=5, maximum=500),
    )


MIC_DEVICE_HELP = (
    "input device: name, part of its name or description, or PortAudio index "
    "('' = default input; see avatarforcing devices)"
)
LOOPBACK_DEVICE_HELP = (
    "loopback input: e.g. 'meeting_out.monitor', 'BlackHole', '[Loopback]' "
    "('' = monitor of the default output; see avatarforcing devices)"
)


def _microphone(kind: str) -> SourceSpec:
    return SourceSpec(
        "microphone",
        "a live audio input (microphone or any input device)",
        _audio_factory(kind, loopback=False),
        _audio_options(MIC_DEVICE_HELP),
    )


LOOPBACK = SourceSpec(
    "loopback",
    "what the speakers play (the remote participant's voice): monitor / WASAPI loopback / BlackHole",
    _audio_factory("user_audio", loopback=True),
    _audio_options(LOOPBACK_DEVICE_HELP),
)


# -- video -------------------------------------------------------------------------------------------
class LiveVideoSource:
    """`VideoSource` over a capture object with ``frames()`` and ``close()`` (screen, webcam):
    RGB `Frame`s, timestamps in monotonic seconds since creation."""

    def __init__(self, capture) -> None:
        self.capture = capture

    def __iter__(self) -> Iterator[Frame]:
        for index, (image, timestamp) in enumerate(self.capture.frames()):
            yield Frame(image, index, timestamp)

    def close(self) -> None:
        self.capture.close()


def _region_check(text: str) -> str | None:
    from avatarforcing.integrations.screen_capture import Region, ScreenCaptureError

    if not text:
        return None
    try:
        Region.parse(text)
    except ScreenCaptureError as error:
        return str(error)
    return None


def _screen(window: str, region: str, monitor: int, fps: float) -> LiveVideoSource:
    from avatarforcing.integrations.screen_capture import ScreenCapture, ScreenSettings, list_monitors

    if not window and not region:
        monitors = list_monitors()
        if monitors and monitor >= len(monitors):
            raise ConfigError(
                "sources.user_video.monitor",
                f"monitor {monitor} does not exist (1..{len(monitors) - 1}, 0 = all monitors)",
            )
    return LiveVideoSource(ScreenCapture(ScreenSettings(window_title=window, region=region, monitor=monitor, fps=fps)))


def _webcam_factory(kind: str):
    """The ``webcam`` factory of source kind `kind` (its errors name ``sources.KIND.index``)."""

    def create(index: int, width: int, height: int, fps: float) -> LiveVideoSource:
        from avatarforcing.integrations.webcam import Webcam, WebcamError, WebcamSettings

        try:
            camera = Webcam(WebcamSettings(index=index, width=width, height=height, fps=fps)).open()
        except WebcamError as error:
            raise ConfigError(f"sources.{kind}.index", str(error)) from None
        return LiveVideoSource(camera)

    return create


WEBCAM_OPTIONS = (
    OptionSpec("index", int, 0, "camera index (0 = first)", minimum=0),
    OptionSpec("width", int, 0, "requested width in pixels (0 = camera default)", minimum=0),
    OptionSpec("height", int, 0, "requested height in pixels (0 = camera default)", minimum=0),
    OptionSpec("fps", float, 0.0, "requested frame rate (0 = camera default)", minimum=0.0, maximum=240.0),
)


def _webcam(kind: str) -> SourceSpec:
    return SourceSpec("webcam", "a camera (OpenCV)", _webcam_factory(kind), WEBCAM_OPTIONS)


SCREEN = SourceSpec(
    "screen",
    "the screen: a window found by title (kept looking for when it closes), a region, or a monitor",
    _screen,
    (
        OptionSpec(
            "window", str, "", "capture the window whose title contains this (case-insensitive); wins over region"
        ),
        OptionSpec("region", str, "", "capture this rectangle: 'x,y,width,height' in pixels", check=_region_check),
        OptionSpec(
            "monitor", int, 1, "monitor to capture when no window/region is given (1 = first, 0 = all)", minimum=0
        ),
        OptionSpec("fps", float, 25.0, "frames per second", minimum=1.0, maximum=120.0),
    ),
)


# -- hooks -------------------------------------------------------------------------------------------
@hookimpl
def register_avatar_audio_sources() -> list[SourceSpec]:
    return [_microphone("avatar_audio")]


@hookimpl
def register_user_audio_sources() -> list[SourceSpec]:
    return [LOOPBACK, _microphone("user_audio")]


@hookimpl
def register_user_video_sources() -> list[SourceSpec]:
    return [SCREEN, _webcam("user_video")]


@hookimpl
def register_avatar_video_sources() -> list[SourceSpec]:
    return [_webcam("avatar_video")]


@hookimpl
def doctor_checks(config) -> list[CheckResult]:
    """Can the configured live sources open? (PortAudio, the loopback, the display/window.)"""
    checks = []
    audio_kinds = [
        k for k in ("avatar_audio", "user_audio") if config.sources.slot(k).use in ("microphone", "loopback")
    ]
    if audio_kinds:
        checks.extend(_audio_checks(config, audio_kinds))
    if config.sources.user_video.use == "screen":
        checks.append(_screen_check(dict(config.sources.user_video.options)))
    return checks


def _audio_checks(config, kinds: list[str]) -> list[CheckResult]:
    from avatarforcing.integrations.audio_devices import (
        AudioDeviceError,
        how_to_get_loopback,
        import_sounddevice,
        plan_input,
    )

    try:
        sd = import_sounddevice()
    except AudioDeviceError as error:
        return [CheckResult("live audio sources", "fail", str(error).split(":")[0], str(error))]
    checks = []
    for kind in kinds:
        slot = config.sources.slot(kind)
        loopback = slot.use == "loopback"
        device = str(slot.options.get("device", ""))
        name = f"source {kind} ({slot.use})"
        try:
            plan = plan_input(device, loopback, sd)
        except AudioDeviceError as error:
            fix = how_to_get_loopback() if loopback and not device else "pick a device from: avatarforcing devices"
            checks.append(CheckResult(name, "warn", str(error), fix))
            continue
        env = "".join(f" with {k}={v}" for k, v in plan.env.items())
        checks.append(CheckResult(name, "ok", f"opens {plan.label}{env}"))
    return checks


def _screen_check(options: dict) -> CheckResult:
    from avatarforcing.integrations.screen_capture import find_windows, list_monitors

    name = "source user_video (screen)"
    monitors = list_monitors()
    if not monitors:
        fix = (
            "run inside an X11 session (DISPLAY set); pure Wayland is not supported by mss"
            if sys.platform.startswith("linux")
            else "allow screen recording for this terminal"
        )
        # like a missing loopback: the machine lacks something a live session would use (the
        # session then sees no face), not a broken install; files (--user-video) still work
        return CheckResult(
            name, "warn", "cannot open the display for screen capture", f"{fix}; or give --user-video FILE"
        )
    title = str(options.get("window", ""))
    if title:
        windows = find_windows(title)
        if not windows:
            tool = (
                " (install xdotool and x11-utils)"
                if sys.platform.startswith("linux") and not shutil.which("xwininfo")
                else ""
            )
            return CheckResult(
                name,
                "warn",
                f"no window titled like {title!r} right now; the source waits for one",
                f"open the meeting window, or fix the title{tool}; avatarforcing devices lists windows",
            )
        return CheckResult(
            name, "ok", f"window {windows[0].title!r} {windows[0].region.width}x{windows[0].region.height}"
        )
    return CheckResult(
        name, "ok", f"{len(monitors) - 1} monitor(s), virtual screen {monitors[0].width}x{monitors[0].height}"
    )
