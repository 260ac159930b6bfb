"""Capture threads: one per source, reading its iterator into an inbox the features thread
drains on the session clock. A source that raises is reported once, reopened with backoff, and
counts as silence / no video meanwhile; a source whose iterator ends has ended (files)."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from avatarforcing.plugin.app.session.resample import MonoResampler
from avatarforcing.plugin.app.session.stats import SessionStats
from avatarforcing.schemas.media_rates import SAMPLE_RATE

log = logging.getLogger(__name__)


class _Inbox:
    """What both inboxes share: `ended` (set by the capture thread when its source ended) and
    `close()`, which wake every waiter of the offline (lossless) mode."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ended = False
        self._closed = False

    @property
    def ended(self) -> bool:
        return self._ended

    @ended.setter
    def ended(self, value: bool) -> None:
        with self._cond:
            self._ended = value
            self._cond.notify_all()

    def close(self) -> None:
        """Release every waiter for good (the session stops)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class AudioInbox(_Inbox):
    """16 kHz mono samples with their capture times.

    Live (``lossless=False``): samples are discarded until `go_live()`; `take(n)` returns
    exactly `n` samples at once (zeros where none arrived: silence never blocks the clock), and a
    backlog of more than `max_backlog` samples is dropped so latency cannot build up.

    Offline (``lossless=True``, renders): nothing is dropped. `add` waits while `max_backlog`
    samples are pending (the source is read only as fast as the engine goes) and `take(n)` waits
    until `n` samples arrived or the source ended; `close()` releases every waiter."""

    def __init__(self, max_backlog: int = SAMPLE_RATE // 2, lossless: bool = False) -> None:
        self._chunks: deque[tuple[np.ndarray, float]] = deque()
        self._size = 0
        super().__init__()
        self._live = lossless
        self.lossless = lossless
        self.max_backlog = max_backlog
        self.dropped_samples = 0

    def go_live(self) -> None:
        with self._cond:
            if not self.lossless:
                self._chunks.clear()
                self._size = 0
            self._live = True

    def add(self, samples: np.ndarray, captured_at: float) -> None:
        with self._cond:
            if not self._live or samples.size == 0:
                return
            if self.lossless:
                self._cond.wait_for(lambda: self._size < self.max_backlog or self._closed)
            self._chunks.append((samples, captured_at))
            self._size += samples.size
            self._cond.notify_all()
            while not self.lossless and self._size - self._chunks[0][0].size >= self.max_backlog:
                old, _ = self._chunks.popleft()
                self._size -= old.size
                self.dropped_samples += old.size

    @property
    def drained(self) -> bool:
        """The source ended and every sample was taken."""
        with self._cond:
            return self._ended and self._size == 0

    def keep_newest(self, n: int) -> int:
        """Drop all but the newest `n` pending samples (the ticks they belonged to were dropped);
        returns how many were dropped."""
        dropped = 0
        with self._cond:
            while self._chunks and self._size > max(0, n):
                samples, captured = self._chunks[0]
                excess = min(samples.size, self._size - max(0, n))
                if excess == samples.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = (samples[excess:], captured)
                self._size -= excess
                dropped += excess
            self.dropped_samples += dropped
            self._cond.notify_all()
        return dropped

    def take(self, n: int) -> tuple[np.ndarray, float, int]:
        """``(samples (n,), newest capture time, real samples in it)``; offline it first waits
        for `n` samples (fewer only at the end of the source, zero-padded)."""
        out = np.zeros(n, np.float32)
        filled, newest = 0, 0.0
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._size >= n or self._ended or self._closed)
            while filled < n and self._chunks:
                samples, captured = self._chunks[0]
                part = samples[: n - filled]
                out[filled : filled + part.size] = part
                filled += part.size
                newest = captured
                if part.size == samples.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = (samples[part.size :], captured)
                self._size -= part.size
            self._cond.notify_all()
        return out, newest, filled


class VideoInbox(_Inbox):
    """User frames (RGB uint8).

    Live: the latest frame and when it arrived (`latest(now)`: None when stale or absent).
    Offline (``lossless=True``): frames with their stream times (seconds from the source's
    start), read in order with `frame_at(t)`, which waits until the source has passed `t` and
    returns the newest frame at or before it (frames are repeated or skipped, never blended);
    `add` waits while `capacity` frames are pending."""

    def __init__(self, stale_after_s: float = 1.0, lossless: bool = False, capacity: int = 50) -> None:
        super().__init__()
        self._frame: np.ndarray | None = None
        self._arrived = 0.0
        self._timeline: deque[tuple[float, np.ndarray]] = deque()
        self.stale_after_s = stale_after_s
        self.lossless = lossless
        self.capacity = capacity
        self.frames_in = 0

    def go_live(self) -> None:
        pass  # the latest frame stays useful

    def add(self, image: np.ndarray, captured_at: float, stream_time: float = 0.0) -> None:
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: len(self._timeline) < self.capacity or self._closed)
                self._timeline.append((stream_time, image))
                self._cond.notify_all()
            self._frame, self._arrived = image, captured_at
            self.frames_in += 1

    def clear(self) -> None:
        with self._cond:
            self._frame = None

    @property
    def drained(self) -> bool:
        return self._ended

    def latest(self, now: float) -> np.ndarray | None:
        with self._cond:
            if self._frame is None or now - self._arrived > self.stale_after_s:
                return None
            return self._frame

    def frame_at(self, t: float) -> np.ndarray | None:
        """Offline: the newest frame whose stream time is at or before `t` (None before the
        first frame or when the source has none)."""
        eps = 1e-6
        with self._cond:
            self._cond.wait_for(
                lambda: self._closed or self._ended or (self._timeline and self._timeline[-1][0] > t + eps)
            )
            while len(self._timeline) > 1 and self._timeline[1][0] <= t + eps:
                self._timeline.popleft()
            self._cond.notify_all()
            if self._timeline and self._timeline[0][0] <= t + eps:
                return self._timeline[0][1]
            return None


class CaptureThread(threading.Thread):
    """Reads the source built by `open_source()` into `inbox` until it ends or `stop` is set.

    Failures (opening or iterating) are logged once per streak, counted in
    ``stats.source_faults[name]``, and retried after `retry_initial_s`, doubling up to
    `retry_max_s`; meanwhile the inbox gets nothing (silence / no video). With `on_failure`
    (offline renders read files, which do not come back) the first failure is handed to it and
    the thread ends instead."""

    def __init__(
        self,
        name: str,
        kind: str,
        open_source: Callable[[], Any],
        inbox: AudioInbox | VideoInbox,
        stats: SessionStats,
        stop: threading.Event,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 5.0,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(name=f"capture-{kind}", daemon=True)
        self.on_failure = on_failure
        self.source_name, self.kind = name, kind
        self.open_source, self.inbox, self.stats, self.stop = open_source, inbox, stats, stop
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self._source: Any = None
        self._lock = threading.Lock()
        self.reopened = 0

    def close_source(self) -> None:
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            try:
                source.close()
            except Exception as error:  # closing a broken device must not hide the stop
                log.debug("closing %s source %s: %s", self.kind, self.source_name, error)

    def _feed(self, source: Any) -> None:
        resampler = MonoResampler() if isinstance(self.inbox, AudioInbox) else None
        for item in source:
            if self.stop.is_set():
                return
            now = time.monotonic()
            if resampler is not None:
                self.inbox.add(resampler.convert(item), now)
            else:
                self.inbox.add(item.image, now, float(item.timestamp))

    def run(self) -> None:
        delay = self.retry_initial_s
        failing = False
        while not self.stop.is_set():
            try:
                source = self.open_source() if self._source is None else self._source
                with self._lock:
                    self._source = source
                if failing:
                    log.warning("%s source %r is back", self.kind, self.source_name)
                    self.reopened += 1
                    failing, delay = False, self.retry_initial_s
                self._feed(source)
                if not self.stop.is_set():
                    self.inbox.ended = True
                    log.info("%s source %r ended", self.kind, self.source_name)
                return
            except Exception as error:  # a vanished device: report, count, retry
                count = self.stats.fault("source_faults", f"{self.kind}:{self.source_name}")
                if self.on_failure is not None:
                    self.close_source()
                    self.inbox.ended = True
                    self.on_failure(error)
                    return
                if not failing:
                    what = "silence" if isinstance(self.inbox, AudioInbox) else "no face"
                    log.warning(
                        "%s source %r failed (%s: %s); using %s and retrying",
                        self.kind,
                        self.source_name,
                        type(error).__name__,
                        error,
                        what,
                    )
                else:
                    log.debug("%s source %r failed again (%d): %s", self.kind, self.source_name, count, error)
                failing = True
                if isinstance(self.inbox, VideoInbox):
                    self.inbox.clear()
                self.close_source()
                if self.stop.wait(delay):
                    return
                delay = min(delay * 2, self.retry_max_s)
        self.close_source()
