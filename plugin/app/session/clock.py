"""The session clock: frame k is due at ``t0 + k / fps`` on the monotonic clock."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from avatarforcing.schemas.media_rates import FRAME_RATE


@dataclass
class SessionClock:
    """A 25 fps (by default) monotonic clock started once with `start()`.

    `due(k)`: monotonic time (s) at which frame `k` is due; `frame_at(t)`: the frame due at or
    before time `t`; `wait_until(t, stop)`: sleep until monotonic time `t`, returning False early
    when the `stop` event is set; `wait_until_due(k, stop)`: the same until frame `k` is due.
    """

    fps: int = FRAME_RATE
    t0: float | None = field(default=None)

    def start(self, at: float | None = None) -> float:
        self.t0 = time.monotonic() if at is None else at
        return self.t0

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def _origin(self) -> float:
        if self.t0 is None:
            raise RuntimeError("the session clock has not been started")
        return self.t0

    def due(self, frame: int) -> float:
        return self._origin() + frame / self.fps

    def frame_at(self, t: float | None = None) -> int:
        now = time.monotonic() if t is None else t
        return int((now - self._origin()) * self.fps)

    def wait_until(self, at: float, stop: threading.Event) -> bool:
        remaining = at - time.monotonic()
        if remaining > 0:
            return not stop.wait(remaining)
        return not stop.is_set()

    def wait_until_due(self, frame: int, stop: threading.Event) -> bool:
        return self.wait_until(self.due(frame), stop)
