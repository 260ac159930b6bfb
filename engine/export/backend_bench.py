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

from collections.abc import Callable
from pathlib import Path

import torch

from avatarforcing.engine.benchmarking import BenchResult, StageClock, machine_description, realtime_factor, summarize
from avatarforcing.engine.export.backend_select import Capabilities, probe_capabilities, select_backend
from avatarforcing.engine.export.graph_specs import ExportSettings, model_hash
from avatarforcing.engine.export.runners import build_runners
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.stage_bench import CONFIGS

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
) -> list[BenchResult]:
    """Benchmark `backend` (a name, ``auto`` or ``all``): `blocks` timed blocks after `warmup`
    untimed ones. `onnx_dir` holds ``avatarforcing graphs export`` output of the same config
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
            results.append(
                BenchResult(available=False, reason=f"not available: {why_not}", backend=name, config=config_name)
            )
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
) -> BenchResult:
    if caps.gpu_name:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runners, specs, device = build_runners(name, model, caps, settings, precision, threads, engine_cache, log)
    clock = StageClock(lambda: _sync(device))
    timings: dict[str, list[float]] = {stage: [] for stage in STAGE_GRAPHS}
    for index in range(warmup + blocks):
        for stage, graph in STAGE_GRAPHS.items():
            run, feeds, calls = runners[graph], specs[graph].example, CALLS_PER_BLOCK.get(stage, 1)
            _, seconds = clock.timed(lambda: [run(feeds) for _ in range(calls)])  # noqa: B023 - called within this iteration
            if index >= warmup:
                timings[stage].append(seconds)
    block_seconds = cfg.block_frames / cfg.fps
    totals = [sum(values) for values in zip(*timings.values())]
    target = [sum(timings[s][i] for s in TARGET_STAGES) for i in range(blocks)]
    total = summarize(totals)
    result = BenchResult(
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
        realtime_factor_p50=realtime_factor(block_seconds, total),
        realtime_factor_p95=realtime_factor(block_seconds, total, "p95"),
        machine=machine_description(device),
    )
    if device.type == "cuda":
        free, capacity = torch.cuda.mem_get_info(device)
        result.peak_gpu_memory_gb = torch.cuda.max_memory_allocated(device) / 2**30
        result.gpu_memory_in_use_gb = (capacity - free) / 2**30
    del runners, specs
    return result


__all__ = ["BACKEND_CHOICES", "BENCH_BACKENDS", "BenchResult", "resolve_backends", "run_backend_benchmark"]
