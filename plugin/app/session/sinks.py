"""One thread per sink: the pacer offers each tick's frame (and audio) without ever waiting on
a sink; a sink that raises is reported once, closed, and reopened from its factory with backoff
while the others continue."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from avatarforcing.plugin.api.types import AudioChunk, Frame, SessionInfo
from avatarforcing.plugin.app.session.stats import SessionStats

log = logging.getLogger(__name__)


class SinkWorker(threading.Thread):
    """Owns one sink. `offer(frame, audio)` replaces any item not yet written (a slow sink
    skips frames, counted in ``stats.sink_skipped``); `finish()` writes what is pending, closes
    the sink and ends the thread. Offline (``lossless=True``) `offer` waits until the previous
    item was taken, so every frame is written. With `on_failure` (offline: a render's file is its
    only output; live: a sink that a reopen would harm, such as the recorder) a failing sink is
    not reopened: it is `dead` and its error is handed to `on_failure`."""

    def __init__(
        self,
        name: str,
        make_sink: Callable[[], Any],
        accepts_audio: bool,
        session: SessionInfo,
        stats: SessionStats,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 5.0,
        sink: Any = None,
        lossless: bool = False,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        super().__init__(name=f"sink-{name}", daemon=True)
        self.sink_name, self.make_sink, self.accepts_audio = name, make_sink, accepts_audio
        self.session, self.stats = session, stats
        self.retry_initial_s, self.retry_max_s = retry_initial_s, retry_max_s
        self.sink = sink  # already opened (the session opens sinks before going live)
        self._cond = threading.Condition()
        self._pending: tuple[Frame, AudioChunk | None] | None = None
        self._finishing = False
        self.lossless, self.on_failure = lossless, on_failure
        self._retry_at = 0.0
        self._delay = retry_initial_s
        self.failing = False
        self.dead = False  # failed and never reopened (see `on_failure`)
        self.written = 0
        self.reopened = 0

    def offer(self, frame: Frame, audio: AudioChunk | None) -> None:
        with self._cond:
            if self.lossless:
                self._cond.wait_for(lambda: self._pending is None or self._finishing or self.failing)
            if self._pending is not None:
                with self.stats._lock:
                    self.stats.sink_skipped[self.sink_name] = self.stats.sink_skipped.get(self.sink_name, 0) + 1
            self._pending = (frame, audio)
            self._cond.notify_all()

    def finish(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._finishing = True
            self._cond.notify_all()
        self.join(timeout)

    def _fail(self, error: BaseException, when: str) -> None:
        import time

        self.stats.fault("sink_faults", self.sink_name)
        if self.on_failure is not None:
            with self._cond:
                self.failing = self.dead = True
                self._retry_at = float("inf")  # never reopened
                self._cond.notify_all()
            self._close_quietly()
            self.on_failure(error)
            return
        if not self.failing:
            log.warning(
                "sink %r failed while %s (%s: %s); the others continue, reopening it",
                self.sink_name,
                when,
                type(error).__name__,
                error,
            )
        self.failing = True
        self._close_quietly()
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.retry_max_s)

    def _close_quietly(self) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception as error:  # a broken sink may fail to close as well
                log.debug("closing sink %s: %s", self.sink_name, error)

    def _ensure_open(self) -> bool:
        import time

        if self.sink is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        try:
            sink = self.make_sink()
            sink.open(self.session)
        except Exception as error:
            self._fail(error, "reopening")
            return False
        self.sink = sink
        self.reopened += 1
        self.failing, self._delay = False, self.retry_initial_s
        log.warning("sink %r reopened", self.sink_name)
        return True

    def run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._finishing)
                item, self._pending = self._pending, None
                finishing = self._finishing
                self._cond.notify_all()
            if item is not None and self._ensure_open():
                frame, audio = item
                try:
                    if self.accepts_audio and audio is not None:
                        self.sink.write_audio(audio)
                    self.sink.write_frame(frame)
                    self.written += 1
                except Exception as error:
                    self._fail(error, f"writing frame {frame.index}")
            if finishing and item is None:
                break
        try:
            if self.sink is not None:
                self.sink.close()
        except Exception as error:
            self.stats.fault("sink_faults", self.sink_name)
            log.warning("sink %r failed to close: %s: %s", self.sink_name, type(error).__name__, error)
        self.sink = None
