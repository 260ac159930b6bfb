"""Built-in plugin ``live_sinks``: where a live avatar goes.

Sinks: ``virtual-camera`` (pyvirtualcam), ``obs`` (OBS Studio over obs-websocket, fed by a local
stream with alpha, MJPEG, or the overlay page), ``mjpeg`` (HTTP MJPEG stream), ``preview`` (a window), ``recorder`` (mp4 with the
avatar audio), ``mic-delay`` (the microphone, delayed by the avatar latency, as a virtual
microphone). Setup per OS: docs/sinks.md.

The session calls ``write_frame`` from its pacer thread 25 times a second, so every sink here
only hands the frame to its own thread (`LatestValue` / `DropOldestQueue`) and returns. The
avatar latency (seconds) is the session's ``latency_s``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np

from avatarforcing.integrations import obs_control
from avatarforcing.integrations.alpha import flatten_rgba
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import AudioChunk, CheckResult, Frame, OptionSpec, SessionInfo, SinkSpec

log = logging.getLogger(__name__)

OBS_PASSWORD_ENV = "AVATARFORCING_OBS_PASSWORD"


def session_latency(session: SessionInfo | None) -> float:
    """The avatar latency in seconds that the session measures (0.0 when absent or invalid)."""
    if session is None:
        return 0.0
    try:
        value = float(session.latency_s)
    except (TypeError, ValueError):
        return 0.0
    return value if value == value and value >= 0 else 0.0


def display_problem() -> str | None:
    """Why a window cannot open here (None when it can)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display: DISPLAY and WAYLAND_DISPLAY are unset (run inside a desktop session, or use the mjpeg sink)"
    return None


# --------------------------------------------------------------------------------------------
# virtual-camera
# --------------------------------------------------------------------------------------------
class VirtualCameraSink:
    """Frames -> a virtual webcam at the session fps (`width`/`height` 0: the frame size)."""

    def __init__(self, backend: str, device: str, fmt: str, width: int, height: int) -> None:
        self.backend, self.device, self.fmt = backend, device, fmt
        self.width, self.height = width, height
        self.stream = None

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.virtual_camera import CameraSettings, VirtualCameraStream

        height, width = session.frame_size
        settings = CameraSettings(
            self.width or width, self.height or height, float(session.fps), self.fmt, self.backend, self.device
        )
        self.stream = VirtualCameraStream(settings).start()

    def write_frame(self, frame: Frame) -> None:
        self.stream.put(frame.image)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()


# --------------------------------------------------------------------------------------------
# mjpeg
# --------------------------------------------------------------------------------------------
class MjpegSink:
    """Frames -> ``http://HOST:PORT/stream.mjpg`` (and ``/snapshot.jpg``)."""

    def __init__(self, host: str, port: int, quality: int) -> None:
        self.host, self.port, self.quality = host, port, quality
        self.server = None

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.mjpeg_server import MjpegServer

        self.server = MjpegServer(self.host, self.port, fps=float(session.fps), quality=self.quality).start()
        session.plugin_state["mjpeg"] = {"url": self.server.url, "snapshot_url": self.server.snapshot_url}
        log.info("mjpeg: add %s as a media source / open it in a browser", self.server.url)

    def write_frame(self, frame: Frame) -> None:
        self.server.publish(frame.image)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


# --------------------------------------------------------------------------------------------
# obs
# --------------------------------------------------------------------------------------------
def overlay_url(session: SessionInfo) -> str:
    """The overlay page's address when the ``overlay`` sink is in use: what it published in
    ``plugin_state["overlay"]["url"]``, else built from ``sinks.overlay.port`` (it may open
    after this sink). ``""`` when it is not in use, or when its page needs an access token (the
    published URL hides it: OBS could not open the page)."""
    from avatarforcing.integrations.overlay_server import PAGE_PATH
    from avatarforcing.plugin.builtins.sinks.overlay import DEFAULT_PORT, NAME

    state = session.plugin_state.get(NAME)
    if isinstance(state, dict) and state.get("url"):
        url = str(state["url"])
        return "" if "token=" in url else url
    sinks = session.config.sinks
    if NAME not in sinks.use or sinks.options_for(NAME).get("token_file"):
        return ""
    return f"http://127.0.0.1:{int(sinks.options_for(NAME).get('port', DEFAULT_PORT))}{PAGE_PATH}"


class ObsSink:
    """Frames -> a local stream (RGBA with alpha, or MJPEG) or the overlay page, shown in OBS by
    an input that the sink creates or reuses; OBS is set up and kept connected in the background
    (write_frame never waits for OBS). After each (re)connect the transport is chosen from the
    input kinds OBS reports (`obs_control.choose_transport`) and the source is set up
    (`obs_control.ensure_source`); ``session.plugin_state["obs"]`` is the supervisor's status
    (``.setup``: the last `SetupResult`)."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        scene: str,
        source: str,
        transport: str,
        position: str,
        height: float,
        stream_port: int,
        mic_input: str,
        connect_timeout: float,
    ) -> None:
        self.host, self.port = host, port
        self._password = password
        self.scene, self.source, self.transport = scene, source, transport
        self.position, self.height, self.stream_port = position, height, stream_port
        self.mic_input, self.connect_timeout = mic_input, connect_timeout
        self.server = None
        self.supervisor = None

    def __repr__(self) -> str:  # never show the password
        return f"ObsSink({self.host}:{self.port}, scene={self.scene!r}, source={self.source!r})"

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.mjpeg_server import MjpegServer

        password = self._password or os.environ.get(OBS_PASSWORD_ENV, "")
        bind = obs_control.local_address_towards(self.host)
        self.server = MjpegServer(bind, self.stream_port, fps=float(session.fps)).start()
        self.supervisor = obs_control.ObsSupervisor(
            make_client=lambda: obs_control.ObsClient(
                self.host, self.port, password, self.connect_timeout, request_timeout=self.connect_timeout
            ),
            setup=lambda client: self._setup(client, session, obs_is_local=bind == "127.0.0.1"),
            mic_input=self.mic_input,
            latency_s=lambda: session_latency(session),
        ).start()
        session.plugin_state["obs"] = self.supervisor.status
        if not self.supervisor.connected.wait(min(self.connect_timeout, 2.0)):
            log.warning(
                "obs: not connected yet (%s); frames keep flowing to %s and the sink keeps trying",
                self.supervisor.status.last_error or "connecting",
                self.server.url,
            )

    def _setup(self, client, session: SessionInfo, obs_is_local: bool):
        """Choose the transport for this OBS and create or update the avatar's input and item."""
        from dataclasses import replace

        height, width = session.frame_size
        urls = {"alpha": self.server.alpha_url, "mjpeg": self.server.url}
        if obs_is_local:  # the overlay page is served on this machine only
            urls["browser"] = overlay_url(session)
        choice = obs_control.choose_transport(self.transport, obs_control.input_kinds(client), urls, obs_is_local)
        kind, settings = obs_control.input_for(choice.name, urls, (width, height), session.fps)
        placement = obs_control.Placement(self.position, self.height, (width, height))
        result = obs_control.ensure_source(
            client, obs_control.SourceSetup(self.scene, self.source, kind, settings, placement)
        )
        log.info(
            "obs: %r in scene %r shows the avatar over %s (%s)", self.source, result.scene, choice.name, choice.reason
        )
        return replace(result, transport=choice.name)

    def write_frame(self, frame: Frame) -> None:
        self.server.publish(frame.image)

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
        if self.server is not None:
            self.server.close()


# --------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------
class PreviewSink:
    """Frames -> a desktop window (its own process, see `integrations.preview_window`). Closing
    the window stops the preview, not the session."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.window = None

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.preview_window import PreviewError, PreviewWindow

        problem = display_problem()
        if problem:
            raise RuntimeError(f"preview: {problem}")
        height, width = session.frame_size
        try:
            self.window = PreviewWindow(self.title, width, height).start()
        except PreviewError as error:
            raise RuntimeError(f"preview: {error}") from None

    def write_frame(self, frame: Frame) -> None:
        self.window.put(frame.image)

    def close(self) -> None:
        if self.window is not None:
            self.window.close()


# --------------------------------------------------------------------------------------------
# recorder
# --------------------------------------------------------------------------------------------
def to_mono_rate(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """float32 ``(n,)``/``(n, c)`` at `rate` -> mono float32 at `target_rate` (linear interpolation)."""
    samples = np.asarray(samples, np.float32)
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    if rate == target_rate or mono.size == 0:
        return np.ascontiguousarray(mono, np.float32)
    count = int(round(mono.size * target_rate / rate))
    positions = np.arange(count) * (rate / target_rate)
    return np.interp(positions, np.arange(mono.size), mono).astype(np.float32)


class RecorderSink:
    """Frames + avatar audio -> an H.264/AAC mp4, encoded on its own thread.

    Frame ``i`` is at ``i / fps``; frames lost because the encoder fell behind are replaced by
    the previous one (the file keeps its timing). Audio is placed by its timestamps (gaps are
    filled with silence, overlaps trimmed).
    """

    def __init__(self, path: str, preset: str, crf: int, queue_seconds: float) -> None:
        self.path = Path(path).expanduser()
        self.preset, self.crf, self.queue_seconds = preset, crf, queue_seconds
        self.frames_written = 0
        self.error = ""
        self._queue = None
        self._thread: threading.Thread | None = None

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.frame_handoff import DropOldestQueue
        from avatarforcing.integrations.media import VideoWriter

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rate = int(session.sample_rate)
        self._writer = VideoWriter(
            self.path, session.fps, audio_sample_rate=self._rate, crf=self.crf, preset=self.preset
        )
        # offline (renders) every frame counts: the queue waits for the encoder instead of dropping
        self._queue = DropOldestQueue(max(8, int(self.queue_seconds * session.fps * 2)), wait_when_full=session.offline)
        self._audio_samples = 0
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        """Raise once the encoder thread stopped: the session learns the recording is over
        (the error names the file)."""
        if self.error:
            raise RuntimeError(f"recording to {self.path} stopped: {self.error}")

    def write_frame(self, frame: Frame) -> None:
        self._check()
        self._queue.put(("frame", frame.index, flatten_rgba(frame.image)))

    def write_audio(self, chunk: AudioChunk) -> None:
        self._check()
        self._queue.put(("audio", chunk.timestamp, to_mono_rate(chunk.samples, chunk.sample_rate, self._rate)))

    def _run(self) -> None:
        last_image = None
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                kind, position, payload = item
                if kind == "frame":
                    while last_image is not None and self.frames_written < position:
                        self._writer.write_frame(last_image)  # fill frames dropped upstream
                        self.frames_written += 1
                    if position >= self.frames_written:
                        self._writer.write_frame(payload)
                        self.frames_written += 1
                        last_image = payload
                else:
                    self._write_audio(position, payload)
        except Exception as error:  # disk full, disk gone: the next write_frame reports it
            self.error = f"{type(error).__name__}: {error}"
            log.error("recorder: writing %s failed: %s", self.path, self.error)

    def _write_audio(self, timestamp: float, samples: np.ndarray) -> None:
        start = int(round(timestamp * self._rate))
        if start > self._audio_samples:
            self._writer.write_audio(np.zeros(start - self._audio_samples, np.float32))
            self._audio_samples = start
        skip = self._audio_samples - start
        if skip < len(samples):
            self._writer.write_audio(samples[skip:])
            self._audio_samples += len(samples) - skip

    def close(self) -> None:
        if self._queue is None:
            return
        self._queue.close()
        self._thread.join()
        dropped = self._queue.dropped
        self._writer.close()
        log.info(
            "recorder: %d frames to %s%s",
            self.frames_written,
            self.path,
            f" ({dropped} items dropped: the encoder fell behind)" if dropped else "",
        )


# --------------------------------------------------------------------------------------------
# mic-delay
# --------------------------------------------------------------------------------------------
class MicDelaySink:
    """The microphone, delayed by the avatar latency (+ `extra_delay_ms`), as a virtual microphone."""

    def __init__(self, input: str, output: str, extra_delay_ms: float) -> None:
        self.input, self.output, self.extra_delay_ms = input, output, extra_delay_ms
        self.delay = None

    def open(self, session: SessionInfo) -> None:
        from avatarforcing.integrations.audio_delay import MicDelay

        self.delay = MicDelay(
            self.input, self.output, delay_s=lambda: session_latency(session), extra_s=self.extra_delay_ms / 1000.0
        ).start()

    def write_frame(self, frame: Frame) -> None:
        pass  # audio only: the delay follows session.latency_s

    def close(self) -> None:
        if self.delay is not None:
            self.delay.close()


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------
def _backend_name(value: str) -> str | None:
    from avatarforcing.integrations.virtual_camera import OS_BACKENDS

    known = {name for names in OS_BACKENDS.values() for name in names}
    try:
        import pyvirtualcam

        known |= set(pyvirtualcam.camera.BACKENDS)
    except ImportError:
        pass
    return None if value == "" or value in known else f"unknown backend; known: {', '.join(sorted(known))}"


def _writable_file(value: str) -> str | None:
    if not value:
        return "a file path is required"
    if not value.lower().endswith(".mp4"):
        return "the recorder writes mp4: give a path ending in .mp4"
    return None


HOST_HELP = "address to serve on (127.0.0.1: this machine only; 0.0.0.0: the network)"
PORT = OptionSpec("port", int, 8090, "TCP port (0 = any free port)", minimum=0, maximum=65535)

VIRTUAL_CAMERA = SinkSpec(
    "virtual-camera",
    "a virtual webcam for meeting apps (pyvirtualcam: v4l2loopback, OBS, Unity Capture)",
    VirtualCameraSink,
    options=(
        OptionSpec(
            "backend",
            str,
            "",
            "pyvirtualcam backend ('' = this OS's: v4l2loopback, obs; Windows also unitycapture)",
            check=_backend_name,
        ),
        OptionSpec("device", str, "", "device ('' = first free; e.g. /dev/video10, 'OBS Virtual Camera')"),
        OptionSpec("fmt", str, "rgb", "pixel format sent to the device", choices=("rgb", "bgr", "rgba")),
        OptionSpec("width", int, 0, "camera width (0 = frame width)", minimum=0, maximum=7680),
        OptionSpec("height", int, 0, "camera height (0 = frame height)", minimum=0, maximum=4320),
    ),
)
OBS = SinkSpec(
    "obs",
    "OBS Studio: the avatar as a source with alpha in the current scene (obs-websocket 5), mic sync offset",
    ObsSink,
    options=(
        OptionSpec("host", str, "127.0.0.1", "OBS websocket host"),
        OptionSpec("port", int, 4455, "OBS websocket port", minimum=1, maximum=65535),
        OptionSpec("password", str, "", f"OBS websocket password ('' = ${OBS_PASSWORD_ENV}); never shown", secret=True),
        OptionSpec("scene", str, "", "scene to put the avatar in ('' = the current program scene; created if missing)"),
        OptionSpec("source", str, "avatarforcing", "OBS input (and scene item) to create or reuse"),
        OptionSpec(
            "transport",
            str,
            "auto",
            "browser (the overlay page), alpha (RGBA media source), mjpeg (no alpha); auto: browser when "
            "OBS has a browser source and the overlay sink runs, else alpha (local OBS) or mjpeg",
            choices=obs_control.TRANSPORTS,
        ),
        OptionSpec(
            "position",
            str,
            "bottom-right",
            "where a new item goes (fill: the whole canvas)",
            choices=obs_control.POSITIONS,
        ),
        OptionSpec(
            "height", float, 0.4, "a new item's height, a fraction of the canvas height", minimum=0.05, maximum=1.0
        ),
        OptionSpec("stream_port", int, 0, "port of the stream OBS reads (0 = any free port)", minimum=0, maximum=65535),
        OptionSpec("mic_input", str, "", "OBS audio input whose sync offset follows the avatar latency ('' = none)"),
        OptionSpec("connect_timeout", float, 3.0, "seconds to wait for OBS per attempt", minimum=0.1, maximum=60.0),
    ),
)
MJPEG = SinkSpec(
    "mjpeg",
    "an HTTP MJPEG stream (/stream.mjpg, /snapshot.jpg) for OBS media sources and browsers",
    MjpegSink,
    options=(
        OptionSpec("host", str, "127.0.0.1", HOST_HELP),
        PORT,
        OptionSpec("quality", int, 85, "JPEG quality", minimum=1, maximum=100),
    ),
)
PREVIEW = SinkSpec(
    "preview",
    "a desktop window showing the avatar",
    PreviewSink,
    options=(OptionSpec("title", str, "AvatarForcing", "window title"),),
)
RECORDER = SinkSpec(
    "recorder",
    "an mp4 file (H.264 + AAC) with the avatar's video and audio",
    RecorderSink,
    options=(
        OptionSpec("path", str, "", "output .mp4 file", required=True, check=_writable_file),
        OptionSpec(
            "preset",
            str,
            "veryfast",
            "x264 preset (faster = less CPU)",
            choices=("ultrafast", "superfast", "veryfast", "faster", "fast", "medium"),
        ),
        OptionSpec("crf", int, 20, "x264 quality (lower = better, bigger)", minimum=0, maximum=51),
        OptionSpec(
            "queue_seconds", float, 4.0, "frames buffered while the encoder catches up", minimum=0.5, maximum=60.0
        ),
    ),
    accepts_audio=True,
    reopen=False,  # reopening would start the file again, losing what was recorded
)
MIC_DELAY = SinkSpec(
    "mic-delay",
    "the microphone delayed by the avatar latency, as a virtual microphone for meeting apps",
    MicDelaySink,
    options=(
        OptionSpec("input", str, "", "microphone: '' = default, a Pulse source name, or a sounddevice device"),
        OptionSpec(
            "output",
            str,
            "avatar_mic",
            "Linux: Pulse null sink to create/use (apps pick "
            "'AvatarForcing microphone'); elsewhere a playback device such as 'CABLE Input'",
        ),
        OptionSpec("extra_delay_ms", float, 0.0, "added to the measured avatar latency", minimum=0.0, maximum=5000.0),
    ),
)


# --------------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------------
@hookimpl
def register_sinks() -> list[SinkSpec]:
    return [VIRTUAL_CAMERA, OBS, MJPEG, PREVIEW, RECORDER, MIC_DELAY]


@hookimpl
def doctor_checks(config) -> list[CheckResult]:
    """What the live sinks can do on this machine, then a check of each sink in ``sinks.use``."""
    from avatarforcing.plugin.builtins.sinks import diagnostics

    return diagnostics.sink_checks(config)
