"""Hand items from a real-time thread to a slower consumer thread without ever blocking the producer.

- `LatestValue`: a single slot; `put` replaces what is there (the consumer only ever wants the
  newest frame: virtual camera, MJPEG stream, preview). Each put gets a sequence number so a
  consumer can wait for something newer than what it already has.
- `DropOldestQueue`: a bounded FIFO; when full, `put` discards the oldest item and counts it
  (recorder: keep every frame while the encoder keeps up, lose the oldest when it cannot).

Both are safe to use from any number of threads; `close()` wakes every waiter.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class LatestValue(Generic[T]):
    """The newest item put, with a sequence number (1 for the first put, then 2, 3...)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._value: T | None = None
        self._sequence = 0
        self._closed = False

    def put(self, value: T) -> None:
        """Replace the stored item; never blocks for longer than a lock acquisition."""
        with self._condition:
            self._value = value
            self._sequence += 1
            self._condition.notify_all()

    def peek(self) -> tuple[int, T | None]:
        """``(sequence, item)`` now; ``(0, None)`` before the first put."""
        with self._condition:
            return self._sequence, self._value

    def wait_newer(self, sequence: int, timeout: float | None) -> tuple[int, T | None]:
        """Wait until an item newer than `sequence` arrives, `timeout` seconds pass, or the slot
        is closed; returns the current ``(sequence, item)`` either way."""
        with self._condition:
            self._condition.wait_for(lambda: self._sequence > sequence or self._closed, timeout)
            return self._sequence, self._value

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake every waiter; later waits return at once."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()


class DropOldestQueue(Generic[T]):
    """A FIFO of at most `capacity` items; `put` on a full queue drops the oldest (`dropped`),
    or, with ``wait_when_full`` (offline work, where every item counts), waits for room."""

    def __init__(self, capacity: int, wait_when_full: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._items: collections.deque[T] = collections.deque()
        self._capacity = capacity
        self._condition = threading.Condition()
        self._closed = False
        self.wait_when_full = wait_when_full
        self.dropped = 0

    def put(self, item: T) -> None:
        """Append `item`, dropping the oldest when full (never blocks for long), or waiting for
        room with ``wait_when_full``."""
        with self._condition:
            if self.wait_when_full:
                self._condition.wait_for(lambda: len(self._items) < self._capacity or self._closed)
            if len(self._items) >= self._capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._condition.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item; ``None`` after `timeout` seconds or once closed and drained."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while not self._items:
                if self._closed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._condition.wait(remaining)
            item = self._items.popleft()
            self._condition.notify_all()
            return item

    def __len__(self) -> int:
        with self._condition:
            return len(self._items)

    def close(self) -> None:
        """No more puts are expected: `get` returns what is left, then ``None``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
