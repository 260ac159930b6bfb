"""Bounded hand-over queues between session stages, with sentinel shutdown and abort.

`StageQueue.put` blocks while the queue is full (back-pressure; a live session's features
thread that falls behind the clock drops input ticks itself, before extracting them). `END` is
the sentinel a producer puts after its last
item; `abort()` wakes every waiter at once (Ctrl-C, a failed stage).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

END = object()  # sentinel: the producer has no more items


class Aborted(Exception):
    """The session is being torn down; the stage should return."""


class StageQueue:
    """A FIFO of at most `capacity` items (`END` does not count towards it)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"queue capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._aborted = False
        self.high_water = 0

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for item in self._items if item is not END)

    def put(self, item: Any) -> None:
        """Append `item`, waiting while the queue is full. Raises `Aborted` once the queue is
        aborted."""
        with self._cond:
            if item is not END:
                while not self._aborted and len(self._items) >= self.capacity:
                    self._cond.wait()
            if self._aborted:
                raise Aborted
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items) - (item is END))
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item (maybe `END`); None after `timeout` seconds without one."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._aborted, timeout):
                return None
            if self._aborted:
                raise Aborted
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> Any:
        """The oldest item or None when empty."""
        with self._cond:
            if self._aborted:
                raise Aborted
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def peek_all(self) -> list[Any]:
        with self._cond:
            return list(self._items)

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()
