"""The output pacer: exactly one frame per session-clock tick to every sink.

Rendered frames wait in a bounded `StageQueue` (about one block; the renderer blocks when it is
full). The first rendered frame fixes the schedule: frame `k` belongs to tick `k + offset`. At
each tick the pacer sends the frame whose tick it is; when none is ready it repeats the last
image (a *held* frame); a frame whose tick has passed while a newer one is already queued is
*dropped*, so a late block never pushes the schedule (and the latency) back.

Catch-up: a queue that stays full for `catch_up_ticks` ticks in a row means frames arrive as
fast as they are shown but the schedule lags behind them — typically after the first clip,
whose frames all come out at once. The pacer then drops the oldest queued frame at each tick
(moving the schedule one frame earlier each time) until the queue is no longer full, so the
latency falls back to what the engine needs instead of staying a clip long.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from avatarforcing.plugin.api.types import AudioChunk, Frame, SessionInfo
from avatarforcing.plugin.app.session.clock import SessionClock
from avatarforcing.plugin.app.session.queues import END, Aborted, StageQueue
from avatarforcing.plugin.app.session.sinks import SinkWorker
from avatarforcing.plugin.app.session.stats import SessionStats
from avatarforcing.schemas.media_rates import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class RenderedFrame:
    """A final frame on its way to the pacer. `queued_at`: monotonic time it entered the queue;
    `captured_at`: capture time of the newest audio of its input tick (0.0 unknown); `audio`:
    the avatar audio of its 40 ms (float32 (640,)) or None."""

    frame: Frame
    queued_at: float
    captured_at: float = 0.0
    audio: np.ndarray | None = None


class FramePacer(threading.Thread):
    """Sends `queue`'s frames to `sinks` on `clock`, starting at tick 0, until `END` (after
    the queue is drained) or `stop`. `initial` is the image shown before the first frame (the
    warm-up render), or None to send nothing until then. `session` (a `SessionInfo`) gets the
    smoothed end-to-end latency in seconds in its `latency_s`, which sinks such as OBS (audio
    sync offset) and mic-delay read."""

    def __init__(
        self,
        clock: SessionClock,
        queue: StageQueue,
        sinks: Sequence[SinkWorker],
        stats: SessionStats,
        stop: threading.Event,
        initial: np.ndarray | None = None,
        sample_rate: int = SAMPLE_RATE,
        hold_log_interval_s: float = 5.0,
        session: SessionInfo | None = None,
    ) -> None:
        super().__init__(name="pacer", daemon=True)
        self.clock, self.queue, self.sinks, self.stats, self.stop = clock, queue, sinks, stats, stop
        self.image = initial
        self.samples_per_frame = sample_rate // clock.fps
        self.sample_rate = sample_rate
        self.offset: int | None = None
        self.hold_log_interval_s = hold_log_interval_s
        self._holds_since_log = 0
        self._last_hold_log = 0.0
        self.finished = False
        self.session = session
        self._latency_s: float | None = None
        self.catch_up_ticks = 2 * queue.capacity
        self._full_ticks = 0
        self.caught_up = 0  # frames dropped to catch up (also counted in stats.dropped)

    def _due_frames(self, tick: int) -> tuple[RenderedFrame | None, bool]:
        """The frame for `tick` (dropping older late ones) and whether END was reached."""
        chosen: RenderedFrame | None = None
        while True:
            items = self.queue.peek_all()
            if not items:
                return chosen, False
            head = items[0]
            if head is END:
                if chosen is None:
                    self.queue.get_nowait()
                    return None, True
                return chosen, False
            if self.offset is None:
                self.offset = tick - head.frame.index
            if head.frame.index + self.offset > tick:
                return chosen, False  # early: its tick has not come
            self.queue.get_nowait()
            if chosen is not None:
                self.stats.count("dropped")
            chosen = head

    def _send(
        self,
        tick: int,
        image: np.ndarray,
        audio: np.ndarray | None,
        held: bool,
        source: int | None,
        metadata: dict | None = None,
    ) -> None:
        """Offer the frame of `tick` to every sink; `metadata`: the rendered frame's (e.g. the
        motion parameters the VMC sink sends), plus ``held`` and ``rendered_index``."""
        frame = Frame(
            image=image,
            index=tick,
            timestamp=tick / self.clock.fps,
            metadata={**(metadata or {}), "held": held, "rendered_index": source},
        )
        chunk = AudioChunk(
            audio if audio is not None else np.zeros(self.samples_per_frame, np.float32),
            self.sample_rate,
            tick / self.clock.fps,
            tick,
        )
        for worker in self.sinks:
            worker.offer(frame, chunk)
        self.stats.count("frames")

    def _catch_up(self) -> None:
        """Drop the oldest queued frame when the queue has been full for `catch_up_ticks`."""
        items = [item for item in self.queue.peek_all() if item is not END]
        if len(items) < self.queue.capacity:
            self._full_ticks = 0
            return
        self._full_ticks += 1
        if self._full_ticks < self.catch_up_ticks or self.offset is None:
            return
        if self.queue.peek_all()[0] is END:
            return
        self.queue.get_nowait()
        self.offset -= 1
        self.caught_up += 1
        self.stats.count("dropped")
        if self.caught_up == 1 or self.caught_up % 25 == 0:
            log.info("output lags the engine: dropped %d frame(s) to catch up", self.caught_up)

    def _publish_latency(self, seconds: float, smoothing: float = 0.05) -> None:
        """Exponential moving average of the end-to-end latency into the session's `latency_s`."""
        previous = self._latency_s
        self._latency_s = seconds if previous is None else previous + smoothing * (seconds - previous)
        if self.session is not None:
            self.session.latency_s = round(self._latency_s, 4)

    def _log_hold(self, now: float) -> None:
        self._holds_since_log += 1
        if now - self._last_hold_log >= self.hold_log_interval_s:
            log.info(
                "the next block is late: holding the last frame (%d held since the last note)", self._holds_since_log
            )
            self._last_hold_log, self._holds_since_log = now, 0

    def run(self) -> None:
        tick = 0
        while self.clock.wait_until_due(tick, self.stop):
            chosen, ended = self._due_frames(tick)
            now = time.monotonic()
            if chosen is not None:
                self.image = chosen.frame.image
                self.stats.observe("queue_wait", now - chosen.queued_at)
                if chosen.captured_at > 0:
                    self.stats.observe("end_to_end", now - chosen.captured_at)
                    self._publish_latency(now - chosen.captured_at)
                self.stats.count("rendered")
                self._send(tick, self.image, chosen.audio, False, chosen.frame.index, chosen.frame.metadata)
            elif ended:
                self.finished = True
                return
            elif self.image is not None:
                self.stats.count("held")
                self._log_hold(now)
                self._send(tick, self.image, None, True, None)
            self._catch_up()
            late = time.monotonic() - self.clock.due(tick)
            tick += 1
            if late > 1.0 / self.clock.fps:  # this thread itself stalled: skip the missed ticks
                skipped = int(late * self.clock.fps)
                log.warning("the pacer fell %.0f ms behind the clock; skipping %d tick(s)", late * 1000, skipped)
                tick += skipped


class OfflinePacer(threading.Thread):
    """Offline (renders): every rendered frame of `queue` goes to `sinks` in order, as fast as
    they take it — no clock, no holds, no drops — until `END` or `stop`. The rendered frame `k`
    is sent as frame `k` with its 40 ms of avatar audio. `on_frame(count)` reports progress."""

    def __init__(
        self,
        queue: StageQueue,
        sinks: Sequence[SinkWorker],
        stats: SessionStats,
        stop: threading.Event,
        fps: int,
        sample_rate: int = SAMPLE_RATE,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(name="pacer", daemon=True)
        self.queue, self.sinks, self.stats, self.stop = queue, sinks, stats, stop
        self.fps, self.sample_rate = fps, sample_rate
        self.samples_per_frame = sample_rate // fps
        self.on_frame = on_frame
        self.finished = False
        self.sent = 0

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.queue.get(timeout=0.5)
                if item is None:
                    continue
                if item is END:
                    self.finished = True
                    return
                self._send(item)
        except Aborted:
            return

    def _send(self, item: RenderedFrame) -> None:
        rendered = item.frame
        index, timestamp = rendered.index, rendered.index / self.fps
        frame = Frame(rendered.image, index, timestamp, {**rendered.metadata, "held": False, "rendered_index": index})
        audio = item.audio if item.audio is not None else np.zeros(self.samples_per_frame, np.float32)
        chunk = AudioChunk(audio, self.sample_rate, timestamp, index)
        for worker in self.sinks:
            worker.offer(frame, chunk)
        self.stats.count("frames")
        self.stats.count("rendered")
        self.sent += 1
        if self.on_frame is not None:
            self.on_frame(self.sent)
