"""The live output delay: a time learned from the frames' lags, not a whole number of ticks.

`DelayController` on its own (deterministic: lags fed by hand), then a real `FramePacer` on the
real clock fed by a producer whose frames become ready a known time after their input tick.
"""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest

from avatarforcing.plugin.api.types import Frame, SessionInfo
from avatarforcing.plugin.app.session.clock import SessionClock
from avatarforcing.plugin.app.session.delay import DelayController
from avatarforcing.plugin.app.session.pacer import FramePacer, RenderedFrame
from avatarforcing.plugin.app.session.queues import END, StageQueue
from avatarforcing.plugin.app.session.sinks import SinkWorker
from avatarforcing.plugin.app.session.stats import SessionStats

PERIOD = 0.04


def test_the_delay_slews_to_a_fraction_of_a_tick_at_most_a_millisecond_per_frame():
    delay = DelayController(period_s=PERIOD)
    delay.start(3 * PERIOD)  # the live edge: 120 ms
    steps = []
    for _ in range(60):
        delay.observe(0.045)  # every frame ready 45 ms after its tick
        steps.append(delay.slew())
    # the target: one period + the lag + the 20 ms margin = 105 ms, not rounded up to 120
    assert delay.target() == pytest.approx(0.105)
    assert delay.delay_s == pytest.approx(0.105)
    assert max(abs(s) for s in steps) <= 0.001 + 1e-12
    assert sum(1 for s in steps if s) == 15  # 15 ms at 1 ms per frame


def test_the_delay_rises_by_slewing_when_the_lags_grow_and_never_below_one_period():
    delay = DelayController(period_s=PERIOD, window=10)
    delay.start(PERIOD)
    for _ in range(30):
        delay.observe(0.0)
        delay.slew()
    assert delay.delay_s == pytest.approx(0.06)  # period + margin, in 20 steps of 1 ms
    for _ in range(10):
        delay.observe(0.03)  # the machine slowed down: 30 ms lags
        delay.slew()
    assert delay.delay_s == pytest.approx(0.07)  # 10 frames, 1 ms each, toward 90 ms
    low = DelayController(period_s=PERIOD, margin_s=0.0)
    low.start(PERIOD)
    low.observe(-0.01)
    assert low.slew() == 0.0 and low.delay_s == PERIOD


def test_a_late_frame_raises_the_delay_a_whole_tick_up_to_the_cap():
    delay = DelayController(period_s=PERIOD, max_raise=2)
    delay.start(0.1)
    delay.observe(0.04)  # target 100 ms
    assert delay.late() and delay.delay_s == pytest.approx(0.14)
    assert delay.late() and delay.delay_s == pytest.approx(0.18)
    assert not delay.late() and delay.delay_s == pytest.approx(0.18)  # target + 2 ticks: held, not raised


def test_a_delay_a_tick_too_large_is_lowered_by_one_skipped_frame_after_it_has_sufficed():
    delay = DelayController(period_s=PERIOD, lower_after=5)
    delay.start(0.2)
    for _ in range(4):
        delay.observe(0.01)  # target 70 ms: 130 ms above it
        assert not delay.should_lower()
    delay.observe(0.01)
    assert delay.should_lower()
    delay.lowered()
    assert delay.delay_s == pytest.approx(0.16) and not delay.should_lower()


class _Recorder:
    """Records (monotonic time, index, held) of every frame written."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, int, bool]] = []

    def open(self, session) -> None:
        pass

    def write_frame(self, frame: Frame) -> None:
        self.frames.append((time.monotonic(), frame.index, frame.metadata["held"]))

    def close(self) -> None:
        pass


def test_the_pacer_shows_frames_a_fraction_of_a_tick_after_they_are_ready():
    """Frames ready 45 ms after their input tick ends (a 4-frame engine's compute, say): the
    pacer's delay settles at 40 + 45 + 20 (margin) = 105 ms = 2.6 ticks, not the 3 ticks a
    whole-tick schedule needs, with no held frame and one frame per 40 ms at the sink."""
    clock = SessionClock()
    queue = StageQueue(25)
    stats = SessionStats()
    stop = threading.Event()
    recorder = _Recorder()
    session = SessionInfo("pacer-test", config=None)
    worker = SinkWorker("recorder", lambda: recorder, False, session, stats, sink=recorder)
    pacer = FramePacer(clock, queue, [worker], stats, stop, settle_ticks=25)
    lag_s, frames = 0.045, 100
    image = np.zeros((8, 8, 3), np.uint8)

    def produce() -> None:
        for k in range(frames):
            ready_at = clock.due(k + 1) + lag_s
            time.sleep(max(0.0, ready_at - time.monotonic()))
            queue.put(RenderedFrame(Frame(image, k, k * PERIOD, {}), k, time.monotonic(), clock.due(k + 1)))
        queue.put(END)

    producer = threading.Thread(target=produce, daemon=True)
    clock.start()
    worker.start()
    producer.start()
    pacer.start()
    pacer.join(frames * PERIOD + 5.0)
    worker.finish()
    assert pacer.finished
    assert stats.held == 0 and stats.dropped == 0
    assert 2.5 < stats.delay_ticks < 2.9, stats.delay_ticks
    # the end-to-end latency of the settled frames: 65 ms (delay minus the input tick), against
    # the 80 ms of a whole-tick schedule
    assert stats.to_dict()["latency"]["end_to_end"]["p50_ms"] < 78.0
    times = [t for t, _, held in recorder.frames if not held]
    gaps = np.diff(times) * 1000.0
    assert abs(statistics.median(gaps) - 40.0) < 2.0, statistics.median(gaps)
