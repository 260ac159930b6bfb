"""How long after its input a frame is shown: the live session's output delay, learned online.

Frame ``k`` of a live session is complete at tick ``k + 1`` of the session clock (its 40 ms of
audio have arrived) and is shown `delay_s` seconds after tick ``k`` began. A frame that is not
ready then is a held frame; a delay larger than needed is latency nobody asked for.
`DelayController` keeps the smallest delay that does not starve: it watches how long after its
input tick each frame became ready (its *lag*: engine blocks, compute, queueing) and targets the
95th percentile of the recent lags plus a margin.

The delay is a time, not a whole number of ticks: the output clock runs at a phase of its own
against the input's, so a frame waits for the compute it needs and not for the next tick
boundary as well. It moves two ways. *Slewing*: each shown frame comes up to `max_slew_s` (1 ms)
earlier or later than one period after the previous one, so the delay follows its target
without a held or skipped frame (a 2.5 % change of pace nobody sees). *Whole ticks*: a frame not
ready at its time is held (the previous image repeats) and the delay grows by a tick at once;
when a delay a tick smaller has sufficed for a while, one frame is skipped to lower it — so a
slower machine holds a frame, and one that recovered catches up a frame at a time while slewing
does the rest. After a stall the session drops the input ticks it missed; at that gap the pacer
restarts at the live edge (the first frame after the gap is shown at once) instead of keeping the
delay the stall built up.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class DelayController:
    """`delay_s` (seconds from the start of a frame's input tick to its showing; 0.0 before the
    first frame, then >= `period_s`) from the lags (seconds) of the frames seen.

    `period_s`: one tick (40 ms at 25 fps); `margin_s`: slack on top of the 95th percentile;
    `window`: how many recent lags count; `lower_after`: how many consecutive frames must fit a
    delay one tick smaller before it is lowered by a skipped frame; `max_raise`: how far above
    the recent lags' need late frames may push the delay (ticks); `max_slew_s`: the most one
    frame's showing may move against the steady period (seconds)."""

    period_s: float
    margin_s: float = 0.02
    window: int = 100
    lower_after: int = 50
    max_raise: int = 8
    max_slew_s: float = 0.001
    delay_s: float = 0.0
    _lags: deque[float] = field(default_factory=deque)
    _target: float = 0.0  # target() of the lags now: computed when they change, read every frame
    _fits_lower: int = 0

    @property
    def started(self) -> bool:
        return self.delay_s > 0.0

    @property
    def ticks(self) -> float:
        """The delay in ticks (fractional)."""
        return self.delay_s / self.period_s

    def needed(self, lag_s: float) -> float:
        """The delay at which a frame of lag `lag_s` is ready on time (with the margin)."""
        return self.period_s + max(0.0, lag_s) + self.margin_s

    def target(self) -> float:
        """The delay the recent lags call for (0.0 before any was seen)."""
        return self._target

    def observe(self, lag_s: float) -> None:
        """A frame became ready `lag_s` seconds after its input tick ended."""
        self._lags.append(lag_s)
        while len(self._lags) > self.window:
            self._lags.popleft()
        ordered = sorted(self._lags)
        self._target = self.needed(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))])
        if self.started and self.target() <= self.delay_s - self.period_s:
            self._fits_lower += 1
        else:
            self._fits_lower = 0

    def start(self, delay_s: float) -> None:
        """Begin at `delay_s` (the first frame's own lag decides it)."""
        self.delay_s = max(self.period_s, delay_s)
        self._fits_lower = 0

    def restart(self, delay_s: float) -> None:
        """Start again at `delay_s`, forgetting the lags seen so far: after a gap in the input
        (ticks the session dropped while it was behind), the lags from before it describe a
        machine that was stalled, not the one now."""
        self._lags.clear()
        self._target = 0.0
        self.start(delay_s)

    def late(self) -> bool:
        """The frame due now is not ready: show it one tick later (and everything after it) —
        up to `max_raise` ticks above what the recent lags call for; True if the delay grew. A
        longer stall holds the picture without growing the delay further (False): the frames
        it made stale are dropped when it ends instead of being played late (a stall's backlog
        would otherwise keep its latency)."""
        self._fits_lower = 0
        if self.delay_s < max(self.period_s, self.target()) + self.max_raise * self.period_s:
            self.delay_s += self.period_s
            return True
        return False

    def should_lower(self) -> bool:
        """True once a delay one tick smaller has sufficed for `lower_after` frames; the caller
        then skips one frame and calls `lowered()`."""
        return self.delay_s >= 2 * self.period_s and self._fits_lower >= self.lower_after

    def lowered(self) -> None:
        self.delay_s -= self.period_s
        self._fits_lower = 0

    def slew(self) -> float:
        """Move the delay toward its target by at most `max_slew_s`; the step (seconds) by which
        the next frame's showing moves against the steady period."""
        target = self.target()
        if not self.started or target <= 0.0:
            return 0.0
        step = min(self.max_slew_s, max(-self.max_slew_s, target - self.delay_s))
        step = max(step, self.period_s - self.delay_s)  # never below one period
        self.delay_s += step
        return step
