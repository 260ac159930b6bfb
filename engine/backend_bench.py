"""Per-backend benchmark of one streaming block: the same fixed-shape graphs on each backend.

A block is 10 frames = 400 ms of video. Per block the benchmark runs, per stage: the streaming
audio window of both parties (`audio_window` twice), the motion encoder on 10 user frames
(`motion_encoder`), the generator block step with NFE and 3-way guidance (`block_step`), and
decoding 10 frames (`decoder`), on the graphs' example inputs (formula weights: speed does not
depend on the values). Backends, in the order of `engine/export/backend_select.py`:

- ``tensorrt``: TensorRT engines built from the ONNX exports (CUDA graph around each engine);
- ``cuda-graphs``: the PyTorch modules captured into CUDA graphs (`StaticGraphRunner`);
- ``eager``: the PyTorch modules, on CUDA when available, else on the CPU;
- ``onnxruntime``: ONNX Runtime (CPU provider) on the exported graphs.

A backend that cannot run here is reported as not available with the reason; it is never
replaced by another one. ``auto`` benchmarks what `select_backend` picks, with its log line.
The real-time factor is video seconds per compute second (``>= 1``: faster than real time).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from avatarforcing.engine.bench import CONFIGS, StageTiming, machine_description, summarize
from avatarforcing.engine.export.backend_select import Capabilities, probe_capabilities, select_backend
from avatarforcing.engine.export.graph_specs import ExportSettings, GraphSpec, build_graph_specs, model_hash
from avatarforcing.engine.official.model import AvatarForcingModel

BENCH_BACKENDS = ("tensorrt", "cuda-graphs", "eager", "onnxruntime")
BACKEND_CHOICES = BENCH_BACKENDS + ("auto", "all")
STAGE_GRAPHS = {
    "audio_features": "audio_window",
    "user_motion": "motion_encoder",
    "generator": "block_step",
    "decoder": "decoder",
}
CALLS_PER_BLOCK = {"audio_features": 2}  # both parties' audio; every other stage runs once
TARGET_STAGES = ("audio_features", "generator", "decoder")  # the per-block latency target
SELECTOR_NAMES = {
    "tensorrt": "tensorrt",
    "cuda_graphs": "cuda-graphs",
    "cuda_eager": "eager",
    "torch_cpu": "eager",
    "onnxruntime_cpu": "onnxruntime",
}
Runner = Callable[[Mapping[str, torch.Tensor]], object]


@dataclass
class BackendBenchResult:
    """One backend's result. When `available` is False only `reason` is meaningful."""

    backend: str
    available: bool
    reason: str
    config: str = ""
    device: str = ""
    precision: str = "fp32"
    threads: int = 0
    nfe: int = 0
    blocks: int = 0
    block_seconds: float = 0.0
    stages: dict[str, StageTiming] = field(default_factory=dict)
    total: StageTiming | None = None  # all four stages
    target_total: StageTiming | None = None  # audio features + generator + decoder
    realtime_factor_p50: float | None = None  # video seconds / compute seconds, all stages, p50
    realtime_factor_p95: float | None = None
    peak_gpu_memory_gb: float | None = None  # torch.cuda.max_memory_allocated (PyTorch's allocator)
    gpu_memory_in_use_gb: float | None = None  # device-wide used memory at the end (includes TensorRT)
    machine: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _specs_on(model: AvatarForcingModel, device: torch.device, settings: ExportSettings) -> dict[str, GraphSpec]:
    moved = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    specs = build_graph_specs(moved, settings, tuple(STAGE_GRAPHS.values()))
    return {spec.name: spec for spec in specs}


def _eager_runner(spec: GraphSpec) -> Runner:
    def run(feeds: Mapping[str, torch.Tensor]):
        with torch.no_grad():
            return spec.run_eager(feeds)

    return run


def _build_runners(
    backend: str,
    model: AvatarForcingModel,
    caps: Capabilities,
    settings: ExportSettings,
    precision: str,
    threads: int | None,
    engine_cache: Path | None,
    log: Callable[[str], None] | None,
) -> tuple[dict[str, Runner], dict[str, GraphSpec], torch.device]:
    """{graph: runner}, {graph: spec with example feeds on the runner's device}, device."""
    cuda = torch.device("cuda")
    if backend == "onnxruntime":
        from avatarforcing.engine.export.onnx_runtime import OrtRunner

        specs = _specs_on(model, torch.device("cpu"), settings)
        runners = {name: OrtRunner(caps.onnx_exports / f"{name}.onnx", threads) for name in specs}
        return runners, specs, torch.device("cpu")
    if backend == "eager":
        device = cuda if caps.gpu_name else torch.device("cpu")
        specs = _specs_on(model, device, settings)
        return {name: _eager_runner(spec) for name, spec in specs.items()}, specs, device
    specs = _specs_on(model, cuda, settings)
    if backend == "cuda-graphs":
        from avatarforcing.engine.export.cuda_graphs import StaticGraphRunner

        return (
            {name: StaticGraphRunner.from_spec(spec, cuda, precision=precision) for name, spec in specs.items()},
            specs,
            cuda,
        )
    from avatarforcing.engine.export.tensorrt_backend import BuildOptions, load_or_build_engines

    if engine_cache is None:
        raise ValueError("the tensorrt backend needs an engine cache directory")
    runners = load_or_build_engines(caps.onnx_exports, engine_cache, tuple(specs), BuildOptions(precision), log=log)
    return dict(runners), specs, cuda


def _unavailable_reason(backend: str, caps: Capabilities) -> str | None:
    if backend == "eager":
        return None
    name = {"tensorrt": "tensorrt", "cuda-graphs": "cuda_graphs", "onnxruntime": "onnxruntime_cpu"}[backend]
    return caps.available(name)


def resolve_backends(requested: str, caps: Capabilities) -> list[tuple[str, str]]:
    """[(backend, reason line)] to benchmark for `requested` (one of `BACKEND_CHOICES`)."""
    if requested not in BACKEND_CHOICES:
        raise ValueError(f"unknown backend {requested!r}; choose from {', '.join(BACKEND_CHOICES)}")
    if requested == "auto":
        choice = select_backend(caps)
        return [(SELECTOR_NAMES[choice.backend], choice.log_line())]
    names = BENCH_BACKENDS if requested == "all" else (requested,)
    return [(name, "requested") for name in names]


@torch.no_grad()
def run_backend_benchmark(
    backend: str = "auto",
    config_name: str = "fixture_small",
    blocks: int = 5,
    threads: int | None = None,
    nfe: int = 10,
    warmup: int = 1,
    onnx_dir: str | Path | None = None,
    engine_cache: str | Path | None = None,
    precision: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[BackendBenchResult]:
    """Benchmark `backend` (a name, ``auto`` or ``all``): `blocks` timed blocks after `warmup`
    untimed ones. `onnx_dir` holds ``avatarforcing engine export`` output of the same config
    and NFE (needed by onnxruntime and tensorrt); `precision` (fp32/fp16/bf16) applies to
    tensorrt (default fp16) and cuda-graphs (default fp32)."""
    if config_name not in CONFIGS:
        raise ValueError(f"unknown config {config_name!r}; choose from {', '.join(CONFIGS)}")
    if blocks < 1 or warmup < 0:
        raise ValueError("blocks must be >= 1 and warmup >= 0")
    if threads:
        torch.set_num_threads(threads)
    cfg = CONFIGS[config_name]()
    settings = ExportSettings(nfe=nfe)
    model = AvatarForcingModel.with_formula_weights(cfg).eval()
    digest = model_hash(model, cfg.to_dict(), settings)
    caps = probe_capabilities(onnx_dir, digest)
    results = []
    for name, reason in resolve_backends(backend, caps):
        why_not = _unavailable_reason(name, caps)
        if why_not is not None:
            results.append(BackendBenchResult(name, False, f"not available: {why_not}", config=config_name))
            continue
        chosen_precision = precision or ("fp16" if name == "tensorrt" else "fp32")
        results.append(
            _time_backend(
                name,
                reason,
                model,
                caps,
                settings,
                cfg,
                config_name,
                blocks,
                warmup,
                threads,
                chosen_precision,
                Path(engine_cache) if engine_cache else None,
                log,
            )
        )
    return results


def _time_backend(
    name, reason, model, caps, settings, cfg, config_name, blocks, warmup, threads, precision, engine_cache, log
) -> BackendBenchResult:
    if caps.gpu_name:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runners, specs, device = _build_runners(name, model, caps, settings, precision, threads, engine_cache, log)
    timings: dict[str, list[float]] = {stage: [] for stage in STAGE_GRAPHS}
    for index in range(warmup + blocks):
        for stage, graph in STAGE_GRAPHS.items():
            feeds = specs[graph].example
            _sync(device)
            start = time.perf_counter()
            for _ in range(CALLS_PER_BLOCK.get(stage, 1)):
                runners[graph](feeds)
            _sync(device)
            if index >= warmup:
                timings[stage].append(time.perf_counter() - start)
    block_seconds = cfg.block_frames / cfg.fps
    totals = [sum(values) for values in zip(*timings.values())]
    target = [sum(timings[s][i] for s in TARGET_STAGES) for i in range(blocks)]
    total = summarize(totals)
    result = BackendBenchResult(
        backend=name,
        available=True,
        reason=reason,
        config=config_name,
        device=str(device),
        precision=precision if name in ("tensorrt", "cuda-graphs") else "fp32",
        threads=torch.get_num_threads(),
        nfe=settings.nfe,
        blocks=blocks,
        block_seconds=block_seconds,
        stages={stage: summarize(values) for stage, values in timings.items()},
        total=total,
        target_total=summarize(target),
        realtime_factor_p50=block_seconds / (total.p50_ms / 1000.0),
        realtime_factor_p95=block_seconds / (total.p95_ms / 1000.0),
        machine=machine_description(device),
    )
    if device.type == "cuda":
        free, capacity = torch.cuda.mem_get_info(device)
        result.peak_gpu_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
        result.gpu_memory_in_use_gb = (capacity - free) / 2**30
    del runners, specs
    return result


__all__ = ["BACKEND_CHOICES", "BENCH_BACKENDS", "BackendBenchResult", "resolve_backends", "run_backend_benchmark"]
