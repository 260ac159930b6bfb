"""A live session on the fastest backend: every per-block graph of an engine through graph
runners of one backend.

The model is the official `AvatarForcingModel` (the official engine: every graph of
`LIVE_GRAPHS`) or a bare `FlowTransformer` (the embedded default engine: only the generator's
first clip and block step); `live_graphs(model)` says which.

`choose_live_backend` picks the backend as `select_backend` does (TensorRT → CUDA graphs →
CUDA eager → ONNX Runtime CPU → PyTorch CPU), restricted to the device the model runs on, and
exports the ONNX graphs the backend needs on first use into a cache folder keyed by the model
hash (`graph_cache_dir`), so the next start reuses them; a cache folder lacking some of them (an
older start exported only the generator) is completed. A requested backend that cannot run is
an error (`BackendUnavailable`), never a silent substitute.

Exports the user made (`export_dir`) are read, never written. Without the generator graphs
they cannot serve the backend at all (as if absent). Without one of the other graphs: with
``auto`` that graph runs in PyTorch and `LiveBackend.graphs_line` says which and why; with a
requested backend it is a `BackendUnavailable` naming the missing files.

`accelerate_pipeline` then hands the runners to an `AvatarPipeline` (its stream's steps, both
audio extractors' window step, the motion encoder and the decoder), `accelerate_stream` to a
bare `MotionStream`; PyTorch backends keep the modules' own. `LiveBackend.graphs` reports which
runner runs each graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from avatarforcing.engine.export.backend_select import (
    BackendChoice,
    Capabilities,
    probe_capabilities,
    select_backend,
)
from avatarforcing.engine.export.graph_modules import identity_feeds
from avatarforcing.engine.export.graph_specs import GENERATOR_GRAPHS, ExportSettings, GraphModel, graphs_of, model_hash
from avatarforcing.engine.export.rollout import GraphIO, PositionalStep
from avatarforcing.engine.export.runners import Runner, build_runners
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.pipeline import AvatarPipeline
from avatarforcing.engine.stream import MotionStream

# selector names -> `build_runners` names; None: the stream's own PyTorch modules
RUNNER_NAMES = {
    "tensorrt": "tensorrt",
    "cuda_graphs": "cuda-graphs",
    "cuda_eager": None,
    "onnxruntime_cpu": "onnxruntime",
    "torch_cpu": None,
}
NEEDS_EXPORTS = ("tensorrt", "onnxruntime_cpu")
LIVE_GRAPHS = GENERATOR_GRAPHS + ("audio_window", "motion_encoder", "decoder")
PYTORCH = "pytorch"  # `LiveBackend.graphs` value of a graph run by the pipeline's own modules
Log = Callable[[str], None]


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here (the message says why and what to do)."""


@dataclass
class LiveBackend:
    """The chosen backend (`choice`), which runner runs each of the model's live graphs
    (`graphs`: graph -> ``onnxruntime``/``tensorrt``/``cuda-graphs``, or ``pytorch`` for the
    modules' own), the export folder it reads (None for PyTorch backends), why a graph runs in
    PyTorch on a non-PyTorch backend (`fallbacks`), and the runners, built once and reused by
    every new pipeline or stream."""

    choice: BackendChoice
    graphs: dict[str, str]
    export_dir: Path | None = None
    fallbacks: dict[str, str] = field(default_factory=dict)
    runners: dict[str, Runner] | None = None
    io_names: dict[str, GraphIO] | None = None

    @property
    def name(self) -> str:
        return self.choice.backend

    def graphs_line(self) -> str:
        """One line: which runner runs which graph, and why any graph runs in PyTorch."""
        by_runner: dict[str, list[str]] = {}
        for graph, runner in self.graphs.items():
            by_runner.setdefault(runner, []).append(graph)
        line = "graphs: " + "; ".join(f"{', '.join(names)} on {runner}" for runner, names in by_runner.items())
        if self.fallbacks:
            line += " (" + "; ".join(f"{graph} in PyTorch: {why}" for graph, why in self.fallbacks.items()) + ")"
        return line


def live_graphs(model: GraphModel) -> tuple[str, ...]:
    """The graphs a live session of `model` runs: `LIVE_GRAPHS` of an `AvatarForcingModel`,
    the `GENERATOR_GRAPHS` of a bare `FlowTransformer`."""
    return tuple(g for g in LIVE_GRAPHS if g in graphs_of(model))


def graph_cache_dir(cache_root: Path, model: GraphModel, settings: ExportSettings) -> tuple[Path, str]:
    """(folder for this model's exports, model hash): one folder per weights + config + export
    settings."""
    digest = model_hash(model, model.cfg.to_dict(), settings)
    return cache_root / digest[:16], digest


def _on_model_device(caps: Capabilities, device: torch.device) -> Capabilities:
    """A model on the CPU cannot use the GPU backends (and a CUDA model no CPU one)."""
    if device.type == "cpu":
        return dataclasses.replace(caps, gpu_name=None, cuda_reason=f"the model runs on the CPU ({device})")
    return dataclasses.replace(
        caps, onnxruntime_version=None, onnxruntime_reason=f"the model runs on {device}, not the CPU"
    )


def choose_live_backend(
    model: GraphModel,
    settings: ExportSettings,
    requested: str,
    cache_root: Path,
    export_dir: Path | None = None,
    log: Log | None = None,
) -> LiveBackend:
    """The backend for a live session of `model` (``requested``: ``auto`` or a selector name)
    and the runner of each of its `live_graphs` (see the module docstring).

    Exports the missing graphs into the per-model folder under `cache_root` when the chosen
    backend needs them; `export_dir` (exports the user made with ``avatarforcing graphs
    export``) is read, never written."""
    device = next(model.parameters()).device
    graphs = live_graphs(model)
    folder, digest = (export_dir, None) if export_dir is not None else graph_cache_dir(cache_root, model, settings)
    if digest is None:
        digest = model_hash(model, model.cfg.to_dict(), settings)
    prefer = None if requested == "auto" else requested
    caps = _live_capabilities(folder, digest, device, graphs)
    if prefer is not None:  # what exports cannot fix fails before exporting anything
        _require(prefer, _with_exports(caps))
    wants_exports = (prefer in NEEDS_EXPORTS) or (prefer is None and _best_needs_exports(caps))
    failed: dict[str, str] = {}
    # only the cache folder is written: a folder the user named is theirs (an unusable one is an error)
    if wants_exports and export_dir is None and _exportable(caps) and _missing_graphs(folder, digest, graphs):
        # sessions starting together (serving replicas, two `run`s) share the cache folder: one
        # exports while the others wait, then find the graphs there
        from filelock import FileLock

        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock"):
            if _missing_graphs(folder, digest, graphs):
                failed = _export(model, settings, folder, digest, graphs, log)
        caps = _live_capabilities(folder, digest, device, graphs)
    if prefer is not None:
        _require(prefer, caps)
    choice = select_backend(caps, prefer=prefer)
    runner = RUNNER_NAMES[choice.backend]
    if runner is None:
        return LiveBackend(choice, dict.fromkeys(graphs, PYTORCH))
    if choice.backend not in NEEDS_EXPORTS:
        return LiveBackend(choice, dict.fromkeys(graphs, runner))
    missing = _missing_graphs(caps.onnx_exports, digest, graphs)
    fallbacks = {g: _why_missing(g, caps.onnx_exports, export_dir is not None, failed) for g in missing}
    if fallbacks and prefer is not None:
        raise BackendUnavailable(
            f"the requested backend {prefer} cannot run every graph: "
            + "; ".join(fallbacks.values())
            + "; set model.backend = auto to run these in PyTorch"
        )
    runners = {g: PYTORCH if g in fallbacks else runner for g in graphs}
    return LiveBackend(choice, runners, caps.onnx_exports, fallbacks)


def _live_capabilities(folder: Path, digest: str, device: torch.device, graphs: tuple[str, ...]) -> Capabilities:
    """`probe_capabilities` for a model on `device`; exports without the generator graphs
    count as absent (the backend could not run the stream)."""
    caps = _on_model_device(probe_capabilities(folder, digest), device)
    if caps.onnx_exports is not None:
        lacking = [g for g in GENERATOR_GRAPHS if g in _missing_graphs(caps.onnx_exports, digest, graphs)]
        if lacking:
            files = ", ".join(f"{g}.onnx" for g in lacking)
            caps = dataclasses.replace(
                caps, onnx_exports=None, onnx_exports_reason=f"ONNX exports in {folder} lack {files}"
            )
    return caps


def _missing_graphs(folder: Path, digest: str, graphs: tuple[str, ...]) -> list[str]:
    """Those of `graphs` that `folder` holds no usable export of (all, without a manifest of
    this model)."""
    from avatarforcing.engine.export.onnx_graphs import MANIFEST_NAME, ExportManifest

    try:
        manifest = ExportManifest.load(folder) if (folder / MANIFEST_NAME).exists() else None
    except (ValueError, KeyError):
        manifest = None
    if manifest is None or manifest.model_hash != digest:
        return list(graphs)
    present = {g.name for g in manifest.graphs if (folder / g.file).exists()}
    return [g for g in graphs if g not in present]


def _why_missing(graph: str, folder: Path, user_folder: bool, failed: Mapping[str, str]) -> str:
    """Why `graph` has no export in `folder` (one clause)."""
    if graph in failed:
        return f"its export failed ({failed[graph]})"
    fix = f" (add it: `avatarforcing graphs export --out {folder}`)" if user_folder else ""
    return f"ONNX exports in {folder} lack {graph}.onnx{fix}"


def _exportable(caps: Capabilities) -> bool:
    """Exports help only where ONNX Runtime or TensorRT can run them."""
    return caps.onnxruntime_version is not None or caps.tensorrt_version is not None


def _require(backend: str, caps: Capabilities) -> None:
    """Raise `BackendUnavailable` (why, and what to set instead) unless `backend` can run."""
    why_not = caps.available(backend)
    if why_not is not None:
        raise BackendUnavailable(
            f"the requested backend {backend} cannot run here: {why_not}; set model.backend = auto to use the best one"
        )


def _with_exports(caps: Capabilities) -> Capabilities:
    """`caps` as if the ONNX exports were there."""
    return dataclasses.replace(caps, onnx_exports=Path("."), onnx_exports_reason=None)


def _best_needs_exports(caps: Capabilities) -> bool:
    """Would the first usable backend, with exports present, be one that reads them?"""
    return select_backend(_with_exports(caps)).backend in NEEDS_EXPORTS


def _export(
    model: GraphModel, settings: ExportSettings, folder: Path, digest: str, graphs: tuple[str, ...], log: Log | None
) -> dict[str, str]:
    """Complete the cache folder with every missing one of `graphs`; {graph: why its export
    failed}."""
    from avatarforcing.engine.export.onnx_graphs import complete_exports

    if log:
        missing = ", ".join(_missing_graphs(folder, digest, graphs))
        log(f"exporting the graphs {missing} to ONNX once, into {folder} (the next start reuses them)")
    _, failed = complete_exports(model, folder, settings, graphs, log=log)
    for graph, why in failed.items():
        if log:
            log(f"export {graph} failed: {why}")
    return failed


def _build(
    backend: LiveBackend,
    model: GraphModel,
    settings: ExportSettings,
    threads: int | None,
    engine_cache: Path | None,
    precision: str,
    log: Log | None,
) -> None:
    """Build the runners of the graphs `backend` runs (once) and their I/O names. ONNX Runtime
    and TensorRT take the names from the manifest: building example inputs would run every
    module once (seconds for the decoder even at fixture_small size, about a minute at official
    size on a CPU) for nothing."""
    graphs = [g for g, runner in backend.graphs.items() if runner != PYTORCH]
    runner_name = RUNNER_NAMES[backend.name]
    caps = dataclasses.replace(probe_capabilities(backend.export_dir), onnx_exports=backend.export_dir)
    from_manifest = backend.name in NEEDS_EXPORTS
    runners, specs, _ = build_runners(
        runner_name,
        model,
        caps,
        settings,
        precision,
        threads,
        engine_cache,
        log,
        graphs=graphs,
        examples=not from_manifest,
    )
    if from_manifest:
        from avatarforcing.engine.export.onnx_graphs import ExportManifest

        manifest = ExportManifest.load(backend.export_dir)
        records = {name: manifest.graph(name) for name in graphs}
        io = {n: GraphIO(tuple(s.name for s in r.inputs), tuple(s.name for s in r.outputs)) for n, r in records.items()}
    else:
        io = {name: GraphIO(spec.input_names, spec.output_names) for name, spec in specs.items()}
    backend.runners, backend.io_names = runners, io


def accelerate_stream(
    stream: MotionStream,
    model: GraphModel,
    backend: LiveBackend,
    settings: ExportSettings,
    threads: int | None = None,
    engine_cache: Path | None = None,
    precision: str = "fp16",
    log: Log | None = None,
) -> None:
    """Run `stream`'s first clip and blocks (a stream of `model`'s flow transformer, window-local
    RoPE, sampled with `settings.nfe`) on `backend` (runners built once, then reused). The
    stream converts motion units at push and pull (`ModelConfig.motion_scale`), outside the
    steps, so the graphs see model units as the eager steps do."""
    if RUNNER_NAMES[backend.name] is None:
        return
    if stream.sampler.nfe != settings.nfe:  # the sampler is unrolled inside the graphs
        raise ValueError(f"the stream samples at nfe {stream.sampler.nfe}, the graphs were exported at {settings.nfe}")
    if backend.runners is None:
        _build(backend, model, settings, threads, engine_cache, precision, log)
    stream.first_clip = PositionalStep(backend.runners["first_clip"], backend.io_names["first_clip"])
    stream.block = PositionalStep(backend.runners["block_step"], backend.io_names["block_step"])


def accelerate_pipeline(
    pipeline: AvatarPipeline,
    model: AvatarForcingModel,
    backend: LiveBackend,
    settings: ExportSettings,
    threads: int | None = None,
    engine_cache: Path | None = None,
    precision: str = "fp16",
    log: Log | None = None,
) -> None:
    """Run every graph of `pipeline` (an `AvatarPipeline` of `model`) that `backend.graphs`
    gives a runner: the stream's steps, both audio extractors' window, the motion encoder and
    the decoder (the last two `settings.image_frames` frames per call, padded)."""
    if RUNNER_NAMES[backend.name] is None:
        return
    if pipeline.config.streaming_audio != settings.audio:
        raise ValueError("the pipeline's streaming-audio config differs from the one the audio graph was exported with")
    if backend.runners is None:
        _build(backend, model, settings, threads, engine_cache, precision, log)
    runners, io = backend.runners, backend.io_names
    if "first_clip" in runners:
        accelerate_stream(pipeline.motion, model, backend, settings, threads, engine_cache, precision, log)
    if "audio_window" in runners:
        pipeline.set_audio_window(PositionalStep(runners["audio_window"], io["audio_window"]))
    frames = settings.image_frames(model.cfg)
    if "motion_encoder" in runners:
        pipeline.set_motion_encoder(_one_output(runners["motion_encoder"], "frames", "motion"), frames)
    if "decoder" in runners:
        identity = identity_feeds(pipeline.identity, model.cfg.input_size)
        pipeline.set_decoder(_one_output(runners["decoder"], "latents", "frames", identity), frames)


def _one_output(
    runner: Runner, input_name: str, output_name: str, constants: Mapping[str, Tensor] | None = None
) -> Callable[[Tensor], Tensor]:
    """`runner` as a function of one tensor (`input_name`, the other inputs `constants`) to
    one output tensor (`output_name`)."""
    fixed = dict(constants or {})

    def run(x: Tensor) -> Tensor:
        return runner({input_name: x, **fixed})[output_name]

    return run


__all__ = [
    "LIVE_GRAPHS",
    "PYTORCH",
    "BackendUnavailable",
    "LiveBackend",
    "accelerate_pipeline",
    "accelerate_stream",
    "choose_live_backend",
    "graph_cache_dir",
    "live_graphs",
]
