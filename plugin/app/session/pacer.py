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
from avatarforcing.plugin.app.session.delay import DelayController
from avatarforcing.plugin.app.session.queues import END, Aborted, StageQueue
from avatarforcing.plugin.app.session.sinks import SinkWorker
from avatarforcing.plugin.app.session.stats import SessionStats
from avatarforcing.schemas.media_rates import SAMPLE_RATE

log = logging.getLogger(__name__)


@dataclass
class RenderedFrame:
    """A final frame on its way to the pacer. `queued_at`: monotonic time it entered the queue;
    `captured_at`: capture time of the newest audio of its input tick (0.0 unknown); `audio`:
    the avatar audio of its 40 ms (float32 (640,)) or None; `tick`: the session-clock tick of its
    input, what the pacer schedules it by (frames are numbered in the engine's stream, which
    skips the ticks the session dropped)."""

    frame: Frame
    tick: int
    queued_at: float
    captured_at: float = 0.0
    audio: np.ndarray | None = None


class FramePacer(threading.Thread):
    """Sends `queue`'s frames to `sinks`, one per period of `clock`, until `END` (after the queue
    is drained) or `stop`.

    Before the first frame, output frame ``n`` goes out at the clock's tick ``n`` (the `initial`
    image, or nothing when it is None). From then on, frame ``k`` is shown ``delay_s`` seconds
    after its input tick ``k`` began, where the delay is the smallest that keeps frames on time
    (`DelayController`: learned from how late frames become ready, a time rather than whole
    ticks, so the output runs at a phase of its own against the input). The first block starts
    at its newest frame (older ones are `skipped_stale`). A frame not ready at its time is held
    (the previous image repeats) and the delay grows by a tick; when a smaller delay has
    sufficed for a while, one frame is dropped to lower it by a tick, and in between each frame
    comes up to 1 ms early or late so the delay follows its target without either. Output
    frames before the first rendered one and in the `settle_ticks` after it, while the delay
    settles on the first blocks, count as `startup_ticks`, not as held. `session` (a
    `SessionInfo`) gets the smoothed end-to-end latency in seconds in its `latency_s`, which
    sinks such as OBS (audio sync offset) and mic-delay read."""

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
        delay: DelayController | None = None,
        settle_ticks: int = 25,
    ) -> None:
        super().__init__(name="pacer", daemon=True)
        self.clock, self.queue, self.sinks, self.stats, self.stop = clock, queue, sinks, stats, stop
        self.image = initial
        self.samples_per_frame = sample_rate // clock.fps
        self.sample_rate = sample_rate
        self.delay = delay or DelayController(period_s=1.0 / clock.fps)
        self.hold_log_interval_s = hold_log_interval_s
        self._holds_since_log = 0
        self._last_hold_log = 0.0
        self._observed = -1  # newest frame index whose lag was observed
        self._first_output = 0  # the output frame at which the first rendered frame was shown
        self._want = 0  # the input tick of the frame to show next (once started)
        self._missing = False  # this output's frame has not arrived (set by _due_frame)
        self.settle_ticks = settle_ticks
        self.finished = False
        self.session = session
        self._latency_s: float | None = None

    @property
    def started(self) -> bool:
        """True once the first rendered frame was shown."""
        return self.delay.started

    def _observe_arrivals(self, items: list) -> None:
        """Learn the lag of each newly queued frame: ready this long after its input tick."""
        for item in items:
            if item is END or item.tick <= self._observed:
                continue
            self._observed = item.tick
            self.delay.observe(item.queued_at - self.clock.due(item.tick + 1))

    def _due_frame(self, at: float) -> tuple[RenderedFrame | None, bool]:
        """The frame to show at time `at` (dropping ones whose time has passed) and whether END
        was reached."""
        items = self.queue.peek_all()
        self._observe_arrivals(items)
        frames = [item for item in items if item is not END]
        if not self.started:
            if not frames:
                if items and items[0] is END:
                    self.queue.get_nowait()
                    return None, True
                return None, False
            # the live edge: the newest frame is shown now
            self._want = frames[-1].tick
            self.delay.start(at - self.clock.due(self._want))
        while True:
            items = self.queue.peek_all()
            if not items:
                self._missing = True  # the frame due now has not arrived yet
                return None, False
            head = items[0]
            if head is END:
                self.queue.get_nowait()
                return None, True
            if head.tick >= self._want:
                break
            self.queue.get_nowait()  # its time has passed
            self.stats.count("dropped" if self.stats.rendered else "skipped_stale")
        if head.tick > self._want:
            # a gap in the input ticks: the session dropped the ticks it missed while it was
            # behind (the delay grew by one tick for every frame it held meanwhile); start again
            # at the live edge, showing the first frame after the gap now, as at the start
            self._want = head.tick
            self.delay.restart(at - self.clock.due(head.tick))
            log.info("input resumed after dropped ticks: delay now %.0f ms", self.delay.delay_s * 1000)
        self._want += 1
        return self.queue.get_nowait(), False

    def _lower_delay(self) -> None:
        """Drop one frame to lower the delay by a tick, when a smaller one has sufficed."""
        if not self.delay.should_lower():
            return
        items = self.queue.peek_all()
        if not items or items[0] is END or items[0].tick != self._want:
            return
        self.queue.get_nowait()
        self._want += 1
        self.stats.count("dropped")
        self.delay.lowered()
        log.info("output ahead of need: one frame dropped, delay now %.0f ms", self.delay.delay_s * 1000)

    def _send(
        self,
        index: int,
        image: np.ndarray,
        audio: np.ndarray | None,
        held: bool,
        source: int | None,
        metadata: dict | None = None,
    ) -> None:
        """Offer output frame `index` to every sink; `metadata`: the rendered frame's (e.g. the
        motion parameters the VMC sink sends), plus ``held`` and ``rendered_index``."""
        frame = Frame(
            image=image,
            index=index,
            timestamp=index / self.clock.fps,
            metadata={**(metadata or {}), "held": held, "rendered_index": source},
        )
        chunk = AudioChunk(
            audio if audio is not None else np.zeros(self.samples_per_frame, np.float32),
            self.sample_rate,
            index / self.clock.fps,
            index,
        )
        for worker in self.sinks:
            worker.offer(frame, chunk)
        self.stats.count("frames")

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
                "the next block is late: holding the last frame (%d held since the last note; delay now %.0f ms)",
                self._holds_since_log,
                self.delay.delay_s * 1000,
            )
            self._last_hold_log, self._holds_since_log = now, 0

    def run(self) -> None:
        index = 0  # output frames so far: the sinks' frame index
        at = self.clock.due(0)
        period = 1.0 / self.clock.fps
        while self.clock.wait_until(at, self.stop):
            self._missing = False
            was_started = self.started
            chosen, ended = self._due_frame(at)
            if self.started and not was_started:
                self._first_output = index
            now = time.monotonic()
            if chosen is not None:
                self.image = chosen.frame.image
                self.stats.observe("queue_wait", now - chosen.queued_at)
                if chosen.captured_at > 0:
                    self.stats.observe("end_to_end", now - chosen.captured_at)
                    self._publish_latency(now - chosen.captured_at)
                self.stats.count("rendered")
                self._send(index, self.image, chosen.audio, False, chosen.frame.index, chosen.frame.metadata)
                self._lower_delay()
                self.delay.slew()
            elif ended:
                self.finished = True
                return
            else:
                if self._missing and not self.delay.late():
                    self._want += 1  # the delay is at its cap: the schedule goes on, the late frame is stale
                if self.started and index - self._first_output >= self.settle_ticks:
                    self.stats.count("held")
                    self._log_hold(now)
                else:  # before the first frame, and while the delay settles on the first blocks
                    self.stats.count("startup_ticks")
                if self.image is not None:
                    self._send(index, self.image, None, True, None)
            self.stats.delay_ticks = round(self.delay.ticks, 2)
            index += 1
            at = self.clock.due(self._want) + self.delay.delay_s if self.started else self.clock.due(index)
            late = time.monotonic() - at
            if late > period:  # this thread itself stalled: skip the missed output frames
                skipped = int(late / period)
                log.warning("the pacer fell %.0f ms behind the clock; skipping %d frame(s)", late * 1000, skipped)
                index += skipped
                at += skipped * period
                if self.started:
                    self._want += skipped


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
