"""The soak benchmark: one long live session, sampled every interval (``avatarforcing bench --soak``).

A soak answers what a test cannot afford: does a session that runs for an hour keep its memory,
its frame rate and its audio/video sync? `run_soak` runs a live `Session` (looped file sources)
in a thread and samples it every `interval_s` seconds of wall time:

- resident memory of the process (RSS, MiB) and the machine's load average;
- frames shown, held and dropped *in the interval* (not cumulative);
- end-to-end latency p50/p95 of the frames shown in the interval (newest audio of a frame's tick
  captured -> frame handed to the sinks), and the latency the session publishes (`latency_s`,
  the delay that mic-delay and OBS's sync offset apply to the user's real voice); their
  difference is the meeting path's audio/video offset: positive = the picture is later than the
  delayed voice.

With a recording, the audio/video offset of the file itself is read back at the start (first
audio - first video timestamp) and at the end (audio end - video end): drift shows there.

Goals (docs/benchmarks.md): RSS growth < 5 % after the first minute, 0 held frames after
warm-up, no drift.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FIRST_MINUTE_S = 60.0  # memory growth is counted from the first sample at or after this


@dataclass
class SoakInterval:
    """One sample: `t_s` seconds since the session went live; counts are for the interval."""

    t_s: float
    rss_mib: float
    load_1min: float  # the machine's 1-minute load average: what else competed for the CPU
    frames: int
    held: int
    dropped: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    published_latency_ms: float
    av_offset_ms: float | None  # latency_p50_ms - published_latency_ms


@dataclass
class SoakResult:
    """A soak's samples and the figures the goals are checked on (see the module docstring)."""

    seconds: float
    interval_s: float
    engine: str = ""
    renderer: str = ""
    intervals: list[SoakInterval] = field(default_factory=list)
    rss_growth_pct: float | None = None  # last sample vs the first sample after the first minute
    held_after_first_minute: int = 0
    dropped_after_first_minute: int = 0
    av_offset_start_ms: float | None = None  # meeting path, first interval with frames
    av_offset_end_ms: float | None = None  # meeting path, last interval
    recording: str | None = None
    recording_av_start_ms: float | None = None
    recording_av_end_ms: float | None = None
    session: dict[str, Any] = field(default_factory=dict)  # the session's final stats
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def process_rss_mib() -> float:
    """Resident memory of this process in MiB."""
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


class IntervalSampler:
    """Turns a session's cumulative stats into per-interval samples (explicit state: the counts
    and the latency events seen at the previous sample)."""

    def __init__(self) -> None:
        self._counts = {"frames": 0, "held": 0, "dropped": 0}
        self._latency_events = 0

    def sample(self, t_s: float, stats: Any, published_latency_s: float) -> SoakInterval:
        """`stats`: a `SessionStats`; `published_latency_s`: the session's `latency_s`."""
        recent, count, _maximum = stats.latency["end_to_end"].snapshot()
        new = min(count - self._latency_events, len(recent))
        self._latency_events = count
        values = np.asarray(recent[len(recent) - new :]) * 1000.0 if new > 0 else np.zeros(0)
        counts = {name: int(getattr(stats, name)) for name in self._counts}
        delta = {name: counts[name] - self._counts[name] for name in counts}
        self._counts = counts
        p50 = round(float(np.percentile(values, 50)), 1) if values.size else None
        published = round(published_latency_s * 1000.0, 1)
        return SoakInterval(
            t_s=round(t_s, 1),
            rss_mib=round(process_rss_mib(), 1),
            load_1min=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0,
            frames=delta["frames"],
            held=delta["held"],
            dropped=delta["dropped"],
            latency_p50_ms=p50,
            latency_p95_ms=round(float(np.percentile(values, 95)), 1) if values.size else None,
            published_latency_ms=published,
            av_offset_ms=None if p50 is None else round(p50 - published, 1),
        )


def recording_av_offsets(path: str | Path) -> tuple[float, float]:
    """(start, end) audio-minus-video offsets of a recording in milliseconds, from the streams'
    own timestamps: start = first audio - first video, end = audio end - video end."""
    import av

    with av.open(str(path)) as container:
        spans = {}
        for stream in (container.streams.video[0], container.streams.audio[0]):
            base = float(stream.time_base)
            start = (stream.start_time or 0) * base
            spans[stream.type] = (start, start + (stream.duration or 0) * base)
    (v0, v1), (a0, a1) = spans["video"], spans["audio"]
    return round((a0 - v0) * 1000.0, 1), round((a1 - v1) * 1000.0, 1)


def summarise(result: SoakResult) -> None:
    """Fill the goal figures of `result` from its intervals."""
    samples = result.intervals
    settled = [s for s in samples if s.t_s >= FIRST_MINUTE_S]
    if len(settled) >= 2:
        first, last = settled[0].rss_mib, settled[-1].rss_mib
        result.rss_growth_pct = round(100.0 * (last - first) / first, 2)
    # settled[0] covers the interval that ends at the first minute: count from the next one
    result.held_after_first_minute = sum(s.held for s in settled[1:])
    result.dropped_after_first_minute = sum(s.dropped for s in settled[1:])
    offsets = [s.av_offset_ms for s in samples if s.av_offset_ms is not None]
    if offsets:
        result.av_offset_start_ms, result.av_offset_end_ms = offsets[0], offsets[-1]


def run_soak(
    session: Any,
    seconds: float,
    interval_s: float = 30.0,
    on_sample: Callable[[SoakInterval], None] | None = None,
    recording: str | Path | None = None,
) -> SoakResult:
    """Run `session` (a live `Session` built with ``duration=seconds``) to its end in a thread,
    sampling it every `interval_s` s of wall time from the moment it goes live; `on_sample` sees
    each sample. `session.request_stop()` (e.g. from a signal handler) ends it early."""
    result = SoakResult(seconds=seconds, interval_s=interval_s, recording=str(recording) if recording else None)
    final: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: final.update(session.run()), name="soak-session", daemon=True)
    runner.start()
    while runner.is_alive() and session.stats.live_s <= 0:  # setup and warm-up are not soaked
        runner.join(0.2)
    sampler = IntervalSampler()
    live_at = time.monotonic()
    next_at = live_at + interval_s
    while runner.is_alive():
        runner.join(max(0.0, next_at - time.monotonic()))
        if not runner.is_alive():
            break
        published = session.session.latency_s if session.session is not None else 0.0
        sample = sampler.sample(time.monotonic() - live_at, session.stats, published)
        result.intervals.append(sample)
        if on_sample is not None:
            on_sample(sample)
        next_at += interval_s
    result.session = final
    result.error = final.get("error")
    result.engine, result.renderer = final.get("engine", ""), final.get("renderer", "")
    summarise(result)
    if recording is not None and Path(recording).is_file():
        result.recording_av_start_ms, result.recording_av_end_ms = recording_av_offsets(recording)
    return result
