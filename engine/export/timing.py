"""Median wall-clock timing of a callable (the dev machine is shared and noisy: medians only)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median, fastest, slowest, and the number of timed calls."""

    median_ms: float
    min_ms: float
    max_ms: float
    calls: int


def time_calls(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; `sync` (e.g.
    `torch.cuda.synchronize`) runs before each clock read so asynchronous work is counted."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if sync:
            sync()
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1000.0)
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


__all__ = ["Timing", "time_calls"]
