"""Graph runners per backend: the same fixed-shape per-block graphs on TensorRT, CUDA graphs,
PyTorch eager or ONNX Runtime (`GraphRunner`: named tensors in, named tensors out).

`build_runners` is what the per-backend benchmark and a live session's engine call; a session
then drives its `MotionStream` through them with `PositionalStep`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from avatarforcing.engine.export.backend_select import Capabilities
from avatarforcing.engine.export.graph_specs import (
    GENERATOR_GRAPHS,
    ExportSettings,
    GraphModel,
    GraphSpec,
    build_graph_specs,
)

BENCH_GRAPHS = ("audio_window", "motion_encoder", "block_step", "decoder")
Runner = Callable[[Mapping[str, torch.Tensor]], object]


def _specs_on(
    model: GraphModel, device: torch.device, settings: ExportSettings, graphs: Sequence[str]
) -> dict[str, GraphSpec]:
    moved = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    specs = build_graph_specs(moved, settings, tuple(graphs))
    return {spec.name: spec for spec in specs}


def _eager_runner(spec: GraphSpec) -> Runner:
    def run(feeds: Mapping[str, torch.Tensor]):
        with torch.no_grad():
            return spec.run_eager(feeds)

    return run


def build_runners(
    backend: str,
    model: GraphModel,
    caps: Capabilities,
    settings: ExportSettings,
    precision: str,
    threads: int | None,
    engine_cache: Path | None,
    log: Callable[[str], None] | None,
    graphs: Sequence[str] = BENCH_GRAPHS,
    examples: bool = True,
) -> tuple[dict[str, Runner], dict[str, GraphSpec], torch.device]:
    """Runners of `graphs` of `model` (an `AvatarForcingModel`, or a bare `FlowTransformer`
    for the generator graphs) on `backend` (``tensorrt``, ``cuda-graphs``, ``eager``,
    ``onnxruntime``): {graph: runner}, {graph: spec with example feeds on the runner's device},
    and that device. ONNX Runtime and TensorRT read the exports in ``caps.onnx_exports``;
    TensorRT engines are built on first use and cached in `engine_cache`. With
    `examples=False` these two return no specs (building them runs every module once; the
    manifest has the I/O names)."""
    cuda = torch.device("cuda")
    if backend == "onnxruntime":
        from avatarforcing.engine.export.onnx_runtime import OrtRunner

        specs = _specs_on(model, torch.device("cpu"), settings, graphs) if examples else {}
        runners = {name: OrtRunner(caps.onnx_exports / f"{name}.onnx", threads) for name in graphs}
        return runners, specs, torch.device("cpu")
    if backend == "eager":
        device = cuda if caps.gpu_name else torch.device("cpu")
        specs = _specs_on(model, device, settings, graphs)
        return {name: _eager_runner(spec) for name, spec in specs.items()}, specs, device
    if backend == "cuda-graphs":
        from avatarforcing.engine.export.cuda_graphs import StaticGraphRunner

        specs = _specs_on(model, cuda, settings, graphs)
        return (
            {name: StaticGraphRunner.from_spec(spec, cuda, precision=precision) for name, spec in specs.items()},
            specs,
            cuda,
        )
    from avatarforcing.engine.export.tensorrt_backend import BuildOptions, load_or_build_engines

    if engine_cache is None:
        raise ValueError("the tensorrt backend needs an engine cache directory")
    specs = _specs_on(model, cuda, settings, graphs) if examples else {}
    runners = load_or_build_engines(caps.onnx_exports, engine_cache, tuple(graphs), BuildOptions(precision), log=log)
    return dict(runners), specs, cuda


__all__ = ["BENCH_GRAPHS", "GENERATOR_GRAPHS", "Runner", "build_runners"]
