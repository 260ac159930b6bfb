"""What a session measures: per-stage latency, end-to-end latency, frame and fault counts."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STAGES = ("capture_to_features", "extract", "generate", "render", "queue_wait", "end_to_end")


class LatencyTracker:
    """Seconds per event: p50/p95 over the last `window` events, max over all."""

    def __init__(self, window: int = 4096) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.maximum = 0.0

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)
        self.count += 1
        self.maximum = max(self.maximum, seconds)

    def snapshot(self) -> tuple[list[float], int, float]:
        """(recent seconds, count, maximum): cheap, to take under the stats lock."""
        return list(self._recent), self.count, self.maximum

    @staticmethod
    def summarize(recent: list[float], count: int, maximum: float) -> dict[str, Any]:
        """``{"count", "p50_ms", "p95_ms", "max_ms"}`` (None where nothing was measured)."""
        if not recent:
            return {"count": 0, "p50_ms": None, "p95_ms": None, "max_ms": None}
        values = np.asarray(recent) * 1000.0
        return {
            "count": count,
            "p50_ms": round(float(np.percentile(values, 50)), 2),
            "p95_ms": round(float(np.percentile(values, 95)), 2),
            "max_ms": round(maximum * 1000.0, 2),
        }

    def summary(self) -> dict[str, Any]:
        """``{"count", "p50_ms", "p95_ms", "max_ms"}`` (None where nothing was measured)."""
        return self.summarize(*self.snapshot())


@dataclass
class SessionStats:
    """Thread-safe counters and latency trackers of one session; `to_dict()` is JSON."""

    engine: str = ""
    renderer: str = ""
    backend: str = ""
    backend_graphs: dict[str, str] = field(default_factory=dict)  # graph -> runner (engines that report it)
    latency: dict[str, LatencyTracker] = field(default_factory=lambda: {s: LatencyTracker() for s in STAGES})
    frames: int = 0  # frames written to the sinks (rendered or held)
    rendered: int = 0  # rendered frames written
    held: int = 0  # ticks that repeated the previous frame (after the first rendered frame)
    dropped: int = 0  # rendered frames dropped as too late (after the first rendered frame)
    startup_ticks: int = 0  # ticks before the first rendered frame (the warm-up image, if any)
    skipped_stale: int = 0  # frames of the first block older than the live edge, never shown
    delay_ticks: float = 0.0  # the pacer's output delay now, in ticks (fractional) after a frame's input tick began
    dropped_ticks: int = 0  # input ticks skipped because the generator fell behind
    blocks: int = 0
    max_frame_queue: int = 0  # deepest renderer -> pacer queue seen
    source_faults: dict[str, int] = field(default_factory=dict)
    sink_faults: dict[str, int] = field(default_factory=dict)
    sink_skipped: dict[str, int] = field(default_factory=dict)
    warm_up_s: float = 0.0
    live_s: float = 0.0
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.latency[stage].add(seconds)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def fault(self, table: str, name: str) -> int:
        """Add one fault of source/sink `name` to `table` (``source_faults``/``sink_faults``)."""
        with self._lock:
            counts = getattr(self, table)
            counts[name] = counts.get(name, 0) + 1
            return counts[name]

    def to_dict(self) -> dict[str, Any]:
        # the percentiles are computed after the lock is released: the pacer counts frames under
        # this lock 25 times a second and must never wait for a summary
        with self._lock:
            snapshots = {stage: tracker.snapshot() for stage, tracker in self.latency.items()}
            data = {
                "engine": self.engine,
                "renderer": self.renderer,
                "backend": self.backend,
                "backend_graphs": dict(self.backend_graphs),
                "frames": self.frames,
                "rendered": self.rendered,
                "held": self.held,
                "dropped": self.dropped,
                "dropped_ticks": self.dropped_ticks,
                "startup_ticks": self.startup_ticks,
                "skipped_stale": self.skipped_stale,
                "delay_ticks": self.delay_ticks,
                "blocks": self.blocks,
                "max_frame_queue": self.max_frame_queue,
                "latency": {},
                "source_faults": dict(self.source_faults),
                "sink_faults": dict(self.sink_faults),
                "sink_skipped": dict(self.sink_skipped),
                "warm_up_s": round(self.warm_up_s, 3),
                "live_s": round(self.live_s, 3),
                "fps": round(self.frames / self.live_s, 3) if self.live_s > 0 else None,
                "error": self.error,
            }
        data["latency"] = {stage: LatencyTracker.summarize(*snap) for stage, snap in snapshots.items()}
        return data

    def log_line(self) -> str:
        d = self.to_dict()
        lat = d["latency"]

        def ms(stage: str) -> str:
            p = lat[stage]["p50_ms"]
            return "-" if p is None else f"{p:.0f}"

        return (
            f"frames {d['frames']} (rendered {d['rendered']}, held {d['held']}, dropped {d['dropped']}), "
            f"blocks {d['blocks']}, p50 ms: extract {ms('extract')} generate {ms('generate')} "
            f"render {ms('render')} end-to-end {ms('end_to_end')}"
        )
