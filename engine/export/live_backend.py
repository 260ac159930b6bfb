"""A live stream on the fastest backend: a `MotionStream`'s generator steps through graph runners.

`choose_live_backend` picks the backend as `select_backend` does (TensorRT → CUDA graphs →
CUDA eager → ONNX Runtime CPU → PyTorch CPU), restricted to the device the model runs on, and
exports the ONNX graphs the backend needs on first use into a cache folder keyed by the model
hash (`graph_cache_dir`), so the next start reuses them. A requested backend that cannot run is
an error (`BackendUnavailable`), never a silent substitute. `accelerate_stream` then replaces
the stream's first-clip and block steps by runners of that backend (`PositionalStep`); PyTorch
backends keep the stream's own modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from avatarforcing.engine.export.backend_select import (
    BackendChoice,
    Capabilities,
    probe_capabilities,
    select_backend,
)
from avatarforcing.engine.export.graph_specs import ExportSettings, model_hash
from avatarforcing.engine.export.rollout import PositionalStep
from avatarforcing.engine.export.runners import GENERATOR_GRAPHS, build_runners
from avatarforcing.engine.official.model import AvatarForcingModel
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
Log = Callable[[str], None]


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here (the message says why and what to do)."""


@dataclass
class LiveBackend:
    """The chosen backend (`choice`), and what runs it: the export folder (None for PyTorch
    backends) and the runners of the generator graphs, reused by every new stream."""

    choice: BackendChoice
    export_dir: Path | None = None
    steps: dict[str, PositionalStep] | None = None

    @property
    def name(self) -> str:
        return self.choice.backend


def graph_cache_dir(cache_root: Path, model: AvatarForcingModel, settings: ExportSettings) -> tuple[Path, str]:
    """(folder for this model's exports, model hash): one folder per weights + export settings."""
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
    model: AvatarForcingModel,
    settings: ExportSettings,
    requested: str,
    cache_root: Path,
    export_dir: Path | None = None,
    log: Log | None = None,
) -> LiveBackend:
    """The backend for a live stream of `model` (``requested``: ``auto`` or a selector name).

    Exports the generator graphs into the per-model folder under `cache_root` when the chosen
    backend needs them and they are not there yet; `export_dir` (exports the user made with
    ``avatarforcing graphs export``) is read, never written."""
    device = next(model.parameters()).device
    folder, digest = (export_dir, None) if export_dir is not None else graph_cache_dir(cache_root, model, settings)
    if digest is None:
        digest = model_hash(model, model.cfg.to_dict(), settings)
    caps = _on_model_device(probe_capabilities(folder, digest), device)
    prefer = None if requested == "auto" else requested
    wants_exports = (prefer in NEEDS_EXPORTS) or (prefer is None and _best_needs_exports(caps))
    # only the cache folder is written: a folder the user named is theirs (an unusable one is an error)
    if wants_exports and caps.onnx_exports is None and export_dir is None and _exportable(caps):
        _export(model, settings, folder, log)
        caps = _on_model_device(probe_capabilities(folder, digest), device)
    if prefer is not None:
        why_not = caps.available(prefer)
        if why_not is not None:
            raise BackendUnavailable(
                f"the requested backend {prefer} cannot run here: {why_not}; set model.backend = auto to use the best one"
            )
    choice = select_backend(caps, prefer=prefer)
    return LiveBackend(choice, caps.onnx_exports if choice.backend in NEEDS_EXPORTS else None)


def _exportable(caps: Capabilities) -> bool:
    """Exports help only where ONNX Runtime or TensorRT can run them."""
    return caps.onnxruntime_version is not None or caps.tensorrt_version is not None


def _best_needs_exports(caps: Capabilities) -> bool:
    """Would the first usable backend, with exports present, be one that reads them?"""
    with_exports = dataclasses.replace(caps, onnx_exports=Path("."), onnx_exports_reason=None)
    return select_backend(with_exports).backend in NEEDS_EXPORTS


def _export(model: AvatarForcingModel, settings: ExportSettings, folder: Path, log: Log | None) -> None:
    from avatarforcing.engine.export.onnx_graphs import export_all

    if log:
        log(f"exporting the generator graphs to ONNX once, into {folder} (the next start reuses them)")
    export_all(model, folder, settings, graphs=GENERATOR_GRAPHS, log=log)


def accelerate_stream(
    stream: MotionStream,
    model: AvatarForcingModel,
    backend: LiveBackend,
    settings: ExportSettings,
    threads: int | None = None,
    engine_cache: Path | None = None,
    precision: str = "fp16",
    log: Log | None = None,
) -> None:
    """Run `stream`'s first clip and blocks on `backend` (runners built once, then reused)."""
    runner_name = RUNNER_NAMES[backend.name]
    if runner_name is None:
        return
    if backend.steps is None:
        caps = dataclasses.replace(probe_capabilities(backend.export_dir), onnx_exports=backend.export_dir)
        runners, specs, _ = build_runners(
            runner_name, model, caps, settings, precision, threads, engine_cache, log, graphs=GENERATOR_GRAPHS
        )
        backend.steps = {name: PositionalStep(runners[name], specs[name]) for name in GENERATOR_GRAPHS}
    stream.first_clip = backend.steps["first_clip"]
    stream.block = backend.steps["block_step"]
