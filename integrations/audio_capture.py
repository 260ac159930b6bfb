"""Live audio capture that survives the sound server: `AudioCapture`.

A supervisor thread opens a `sounddevice.InputStream` in callback mode; the callback copies each
block into a bounded ring (oldest blocks dropped when the reader falls behind). The stream is
watched through ``finished_callback`` and ``stream.active`` (in callback mode PortAudio raises
nothing when the server dies: callbacks stop and the stream goes inactive). After a loss, or when
opening fails, it retries with exponential backoff until `close()`; the outage is reported once
(logger ``avatarforcing.audio``, and `AudioCapture.events`).

Not an error: a stream that opened but has not called back yet. An idle PulseAudio null sink
may deliver its first block only after seconds, or when something plays.

Sound-server sources (``PULSE_SOURCE``, see `audio_devices.OpenPlan`) are selected by setting
the variable in ``os.environ`` only while the stream opens (the ALSA ``pulse`` plugin reads it
then), under a process-wide lock so that concurrent opens do not see each other's value.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from avatarforcing.integrations import pulseaudio
from avatarforcing.integrations.audio_devices import (
    AudioDeviceError,
    import_sounddevice,
    plan_input,
    portaudio_devices,
    rescan_portaudio,
)

LOG = logging.getLogger("avatarforcing.audio")
# os.environ is process-wide: opens that set PULSE_SOURCE take turns.
_ENVIRONMENT_LOCK = threading.Lock()


@dataclass(frozen=True)
class CaptureSettings:
    """What to capture.

    `device`: name, substring or PortAudio index (``""`` = default input, or with `loopback` the
    monitor of the default output); `sample_rate` in Hz; `channels`; `block_ms`: callback block
    length; `buffer_s`: ring capacity in seconds; `retry_min_s`/`retry_max_s`: reopen backoff.
    """

    device: str = ""
    loopback: bool = False
    sample_rate: int = 48000
    channels: int = 1
    block_ms: int = 20
    buffer_s: float = 2.0
    retry_min_s: float = 0.25
    retry_max_s: float = 4.0

    def __post_init__(self) -> None:
        if self.sample_rate < 1000 or self.channels < 1 or self.block_ms < 1 or self.buffer_s <= 0:
            raise ValueError(f"bad capture settings: {self}")

    @property
    def block_frames(self) -> int:
        return max(1, self.sample_rate * self.block_ms // 1000)


@dataclass(frozen=True)
class CapturedBlock:
    """`samples`: ``float32`` ``(n, channels)``; `timestamp`: seconds of the first sample on the
    capture's clock (monotonic, relative to its origin); `run`: 0 for the first opened stream,
    +1 per reopen."""

    samples: np.ndarray
    timestamp: float
    run: int


class AudioCapture:
    """Captures `settings` into a bounded ring; `read()` hands blocks out in order.

    `origin`: ``time.monotonic()`` value that timestamps count from (default: construction).
    Start with `start()`; `close()` is idempotent and callable from any thread.
    """

    RESYNC_S = 0.05  # re-anchor sample-count timestamps that drift this far from the clock
    WATCH_S = 0.1  # how often the supervisor looks at stream.active

    def __init__(
        self, settings: CaptureSettings, origin: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.origin = clock() if origin is None else origin
        self.events: list[str] = []  # outages and recoveries, for telemetry and tests
        self.dropped_blocks = 0
        self.overflows = 0
        self.opened_streams = 0
        self._ring: collections.deque[CapturedBlock] = collections.deque(
            maxlen=max(2, int(settings.buffer_s * 1000 / settings.block_ms))
        )
        self._ready = threading.Condition()
        self._closed = threading.Event()
        self._stream_done = threading.Event()
        self._thread: threading.Thread | None = None
        self._run = -1
        self._run_start = 0.0
        self._run_frames = 0
        self._last_rescan = -1e9

    # -- public ------------------------------------------------------------------------------
    def start(self) -> AudioCapture:
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="audio-capture", daemon=True)
            self._thread.start()
        return self

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def read(self, timeout: float | None = None) -> CapturedBlock | None:
        """The oldest captured block, waiting up to `timeout` seconds (``None``: until a block
        comes or `close()`); ``None`` when nothing came or the capture is closed."""
        with self._ready:
            if not self._ring and not self._closed.is_set():
                self._ready.wait(timeout)
            if self._closed.is_set() or not self._ring:
                return None
            return self._ring.popleft()

    def close(self) -> None:
        """Stop capturing; wakes readers; idempotent, any thread."""
        self._closed.set()
        self._stream_done.set()
        with self._ready:
            self._ready.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # -- supervisor ----------------------------------------------------------------------------
    def _report(self, message: str, level: int = logging.WARNING) -> None:
        self.events.append(message)
        LOG.log(
            level,
            "audio capture (%s): %s",
            self.settings.device or ("loopback" if self.settings.loopback else "default input"),
            message,
        )

    def _supervise(self) -> None:
        delay = self.settings.retry_min_s
        down_reason: str | None = None  # set while the device is unavailable
        while not self._closed.is_set():
            try:
                stream, plan = self._open()
            except Exception as error:  # any failure to open: report once per outage, retry
                reason = _one_line(error)
                if down_reason is None:
                    self._report(f"cannot open: {reason}; retrying in the background")
                down_reason = reason
                self._closed.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_s)
                continue
            if down_reason is not None:
                self._report(f"capturing again from {plan.label}", logging.INFO)
                down_reason = None
            else:
                self.events.append(f"capturing from {plan.label}")
            delay = self.settings.retry_min_s
            self._watch(stream)
            _close_quietly(stream)
            if not self._closed.is_set():
                down_reason = "stream stopped"
                self._report("the input stream stopped (device or sound server gone); reopening")

    def _watch(self, stream) -> None:
        while not self._closed.is_set() and not self._stream_done.is_set():
            if not stream.active:
                return
            self._stream_done.wait(self.WATCH_S)

    def _open(self):
        sd = import_sounddevice()
        self._rescan_if_server_unseen(sd)
        plan = plan_input(self.settings.device, self.settings.loopback, sd)
        self._stream_done.clear()
        self._run += 1
        self._run_frames = 0
        run = self._run
        with _ENVIRONMENT_LOCK:
            saved = {key: os.environ.get(key) for key in plan.env}
            os.environ.update(plan.env)
            try:
                stream = sd.InputStream(
                    device=plan.device,
                    samplerate=self.settings.sample_rate,
                    channels=self.settings.channels,
                    dtype="float32",
                    blocksize=self.settings.block_frames,
                    extra_settings=plan.extra_settings,
                    callback=lambda data, frames, info, status: self._on_block(data, frames, status, run),
                    finished_callback=self._stream_done.set,
                )
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        try:
            stream.start()
        except Exception:
            _close_quietly(stream)
            raise
        self.opened_streams += 1
        return stream, plan

    def _rescan_if_server_unseen(self, sd) -> None:
        """Linux: PortAudio enumerates once; if the sound server came up after that, its ALSA
        ``pulse`` device is missing until PortAudio is re-initialised (at most every 10 s)."""
        if not sys.platform.startswith("linux") or self.clock() - self._last_rescan < 10.0:
            return
        names = {d.name for d in portaudio_devices(sd) if d.kind == "input"}
        if not names & {"pulse", "default"} and pulseaudio.available():
            self._last_rescan = self.clock()
            LOG.info("sound server found after PortAudio started: rescanning devices")
            rescan_portaudio(sd)

    def _on_block(self, data: np.ndarray, frames: int, status, run: int) -> None:
        """PortAudio's callback thread: copy, timestamp, append; never blocks for long."""
        if status and status.input_overflow:
            self.overflows += 1
        now = self.clock() - self.origin
        rate = self.settings.sample_rate
        stamped = now - frames / rate
        if self._run_frames == 0:
            self._run_start = stamped
        expected = self._run_start + self._run_frames / rate
        if abs(expected - stamped) > self.RESYNC_S:  # lost data or clock drift: follow the clock
            self._run_start = stamped - self._run_frames / rate
            expected = stamped
        self._run_frames += frames
        block = CapturedBlock(data.copy(), expected, run)
        with self._ready:
            if len(self._ring) == self._ring.maxlen:
                self.dropped_blocks += 1
            self._ring.append(block)
            self._ready.notify()


def _close_quietly(stream) -> None:
    try:
        stream.stop()
    except Exception:
        pass
    try:
        stream.close()
    except Exception:
        pass


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, AudioDeviceError) else f"{type(error).__name__}: {text}"
