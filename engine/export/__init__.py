"""Acceleration: ONNX export of the per-block graphs, ONNX Runtime / TensorRT / CUDA-graph
runners, and the automatic backend choice (see docs/acceleration.md).

Submodules import their optional dependencies (onnx, onnxruntime, onnxscript, tensorrt,
polygraphy) lazily, so `import avatarforcing.engine.export` works with PyTorch alone.
"""

from avatarforcing.engine.export.backend_select import BackendChoice, Capabilities, probe_capabilities, select_backend
from avatarforcing.engine.export.cuda_graphs import StaticGraphRunner
from avatarforcing.engine.export.graph_specs import (
    GRAPH_NAMES,
    ExportSettings,
    GraphSpec,
    TensorSpec,
    build_graph_specs,
    model_hash,
)
from avatarforcing.engine.export.onnx_graphs import ExportManifest, export_all
from avatarforcing.engine.export.onnx_runtime import ExportCheckReport, OrtRunner, check_exports, engine_export_main
from avatarforcing.engine.export.rollout import EagerRunner, PositionalStep, rollout_latents
from avatarforcing.engine.export.tensorrt_backend import engine_build_main, load_or_build_engines

__all__ = [
    "GRAPH_NAMES",
    "BackendChoice",
    "Capabilities",
    "EagerRunner",
    "ExportCheckReport",
    "ExportManifest",
    "ExportSettings",
    "GraphSpec",
    "OrtRunner",
    "PositionalStep",
    "StaticGraphRunner",
    "TensorSpec",
    "build_graph_specs",
    "check_exports",
    "engine_build_main",
    "engine_export_main",
    "export_all",
    "load_or_build_engines",
    "model_hash",
    "probe_capabilities",
    "rollout_latents",
    "select_backend",
]
