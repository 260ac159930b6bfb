"""The benchmark harness: timing per block and per stage, one timing type, one result type.

Every benchmark of the project (`avatarforcing bench`: the official model's stages, the
exported graphs per backend, a registered engine through the plugin system; the ONNX Runtime
parity and backend-selection timings) measures with `StageClock` / `time_calls` and reports a
`BenchResult` of `Timing`s. The real-time factor is video seconds per compute second: ``>= 1``
is real time.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Milliseconds per sample (a block, a stage of a block, or one call): median, 95th
    percentile, mean, fastest, slowest, and the number of samples."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    samples: int


def summarize(seconds: Sequence[float]) -> Timing:
    """The `Timing` of durations given in seconds (at least one)."""
    if not seconds:
        raise ValueError("summarize needs at least one duration")
    ms = sorted(s * 1000.0 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return Timing(statistics.median(ms), p95, statistics.fmean(ms), ms[0], ms[-1], len(ms))


class StageClock:
    """Wall-clock seconds of calls, with `sync` (e.g. ``torch.cuda.synchronize``) run before each
    clock read so asynchronous device work is counted."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync

    def now(self) -> float:
        if self.sync is not None:
            self.sync()
        return time.perf_counter()

    def timed(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """(fn(), seconds it took)."""
        start = self.now()
        out = fn()
        return out, self.now() - start


def time_calls(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable[[], None] | None = None
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed (the dev machine is shared
    and noisy: read medians)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    clock = StageClock(sync)
    return summarize([clock.timed(fn)[1] for _ in range(repeats)])


def machine_description(device: Any = None) -> dict[str, str]:
    """Platform, processor, thread count, torch version and (on CUDA) the GPU's name."""
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": str(torch.get_num_threads()),
        "torch": torch.__version__,
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@dataclass
class BenchResult:
    """One benchmark's result. What was timed: `config` (model configuration), `backend` (for
    per-backend runs), `engine` and `renderer` (for engine runs); unused ones stay empty. When
    `available` is False only `reason` is meaningful: nothing was measured, nothing substituted.

    `stages` and `total` are per block; `target_total` sums the stages of the per-block latency
    target where a benchmark defines one. Real-time factors are video seconds per compute second.
    """

    available: bool = True
    reason: str = ""
    config: str = ""
    backend: str = ""
    engine: str = ""
    renderer: str = ""
    device: str = ""
    precision: str = ""
    threads: int = 0
    nfe: int = 0
    blocks: int = 0
    frames: int = 0
    block_seconds: float = 0.0
    first_block_frames: int = 0
    block_frames: int = 0
    stages: dict[str, Timing] = field(default_factory=dict)
    total: Timing | None = None
    target_total: Timing | None = None
    realtime_factor_p50: float | None = None
    realtime_factor_p95: float | None = None
    peak_gpu_memory_gb: float | None = None  # torch.cuda.max_memory_allocated (PyTorch's allocator)
    gpu_memory_in_use_gb: float | None = None  # device-wide used memory at the end (includes TensorRT)
    machine: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def realtime_factor(video_seconds: float, compute: Timing, quantile: str = "p50") -> float | None:
    """Video seconds per compute second for one block of `video_seconds` that took `compute`."""
    ms = compute.p50_ms if quantile == "p50" else compute.p95_ms
    return video_seconds / (ms / 1000.0) if ms > 0 else None
