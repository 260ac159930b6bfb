"""How long after its input a frame is shown: the live session's output delay, learned online.

Frame ``k`` of a live session is complete at tick ``k + 1`` of the session clock (its 40 ms of
audio have arrived) and is shown at tick ``k + delay``. A frame that is not ready at its tick is
a held frame; a delay larger than needed is latency nobody asked for. `DelayController` keeps
the smallest delay that does not starve: it watches how long after its input tick each frame
became ready (its *lag*: engine blocks, compute, queueing) and targets the 95th percentile of
the recent lags plus a margin. It raises the delay at once when a frame comes late and lowers it
one tick at a time, only after the smaller delay would have sufficed for a while — so a slower
machine holds a frame, and a recovered one catches up by one frame at a time. After a stall the
session drops the input ticks it missed; at that gap the pacer restarts at the live edge (the
first frame after the gap is shown at once) instead of keeping the delay the stall built up.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class DelayController:
    """`delay` (ticks, >= 1) from the lags (seconds) of the frames seen.

    `period_s`: one tick (40 ms at 25 fps); `margin_s`: slack on top of the 95th percentile;
    `window`: how many recent lags count; `lower_after`: how many consecutive frames must fit a
    delay one tick smaller before it is lowered; `max_raise`: how far above the recent lags'
    need late frames may push the delay (ticks)."""

    period_s: float
    margin_s: float = 0.02
    window: int = 100
    lower_after: int = 50
    max_raise: int = 8
    delay: int = 0
    _lags: deque[float] = field(default_factory=deque)
    _fits_lower: int = 0

    def needed(self, lag_s: float) -> int:
        """The delay at which a frame of lag `lag_s` is ready on time (with the margin)."""
        return 1 + max(0, math.ceil((lag_s + self.margin_s) / self.period_s - 1e-9))

    def target(self) -> int:
        """The delay the recent lags call for (0 before any was seen)."""
        if not self._lags:
            return 0
        ordered = sorted(self._lags)
        p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
        return self.needed(p95)

    def observe(self, lag_s: float) -> None:
        """A frame became ready `lag_s` seconds after its input tick."""
        self._lags.append(lag_s)
        while len(self._lags) > self.window:
            self._lags.popleft()
        if self.delay and self.target() < self.delay:
            self._fits_lower += 1
        else:
            self._fits_lower = 0

    def start(self, delay: int) -> None:
        """Begin at `delay` (the first frame's own lag decides it)."""
        self.delay = max(1, delay)
        self._fits_lower = 0

    def restart(self, delay: int) -> None:
        """Start again at `delay`, forgetting the lags seen so far: after a gap in the input
        (ticks the session dropped while it was behind), the lags from before it describe a
        machine that was stalled, not the one now."""
        self._lags.clear()
        self.start(delay)

    def late(self) -> None:
        """The frame due now is not ready: show it one tick later (and everything after it) —
        up to `max_raise` ticks above what the recent lags call for. A longer stall holds the
        picture without growing the delay further: the frames it made stale are dropped when it
        ends instead of being played late (a stall's backlog would otherwise keep its latency)."""
        if self.delay < max(1, self.target()) + self.max_raise:
            self.delay += 1
        self._fits_lower = 0

    def should_lower(self) -> bool:
        """True once a delay one tick smaller has sufficed for `lower_after` frames; the caller
        then skips one frame and calls `lowered()`."""
        return self.delay > 1 and self._fits_lower >= self.lower_after

    def lowered(self) -> None:
        self.delay -= 1
        self._fits_lower = 0
