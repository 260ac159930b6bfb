"""Which backend runs the per-block graphs, and one log line saying why.

Order: TensorRT -> CUDA graphs -> eager CUDA -> ONNX Runtime CPU -> PyTorch CPU. A backend is
skipped only for a stated reason (no CUDA device, `tensorrt` not importable, no ONNX exports
for this model, ...), and the reason of every skip that matters is in the log line, so a
silent fallback to the CPU cannot happen.

The default CPU order puts ONNX Runtime first because it ran the block step faster than PyTorch
eager on the 2-core machine of docs/benchmarks.md (`compare_cpu_backends` measures it on any
machine; `avatarforcing bench --backend all` too). The log line says that, not that it was
measured here.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from avatarforcing.engine.benchmarking import StageClock, Timing, summarize
from avatarforcing.engine.export.graph_specs import GraphSpec

BACKENDS = ("tensorrt", "cuda_graphs", "cuda_eager", "onnxruntime_cpu", "torch_cpu")
DEFAULT_CPU_ORDER = ("onnxruntime_cpu", "torch_cpu")
CPU_ORDER_EVIDENCE = (
    "first in the default CPU order (faster than PyTorch on the machine of docs/benchmarks.md; "
    "`avatarforcing bench --backend all` measures this one)"
)
NO_EXPORT_DIR = "no ONNX export directory configured (run `avatarforcing graphs export --out DIR`)"


@dataclass(frozen=True)
class Capabilities:
    """What this process can use; every `*_reason` says why the thing is missing (None if present)."""

    gpu_name: str | None = None
    compute_capability: tuple[int, int] | None = None
    cuda_reason: str | None = "not probed"
    cuda_graphs: bool = False
    tensorrt_version: str | None = None
    tensorrt_reason: str | None = "not probed"
    onnxruntime_version: str | None = None
    onnxruntime_reason: str | None = "not probed"
    onnx_exports: Path | None = None
    onnx_exports_reason: str | None = NO_EXPORT_DIR

    def available(self, backend: str) -> str | None:
        """None when `backend` can run here, else why not."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if backend in ("tensorrt", "cuda_graphs", "cuda_eager") and self.gpu_name is None:
            return f"no CUDA device ({self.cuda_reason})"
        if backend == "tensorrt":
            if self.tensorrt_version is None:
                return self.tensorrt_reason
            return None if self.onnx_exports else f"it builds engines from the ONNX exports: {self.onnx_exports_reason}"
        if backend == "cuda_graphs" and not self.cuda_graphs:
            return "torch.cuda.CUDAGraph is not usable in this PyTorch build"
        if backend == "onnxruntime_cpu":
            if self.onnxruntime_version is None:
                return self.onnxruntime_reason
            return None if self.onnx_exports else self.onnx_exports_reason
        return None


def _probe_onnx_exports(onnx_dir: str | Path | None, model_hash: str | None) -> tuple[Path | None, str | None]:
    """(export directory, None) when usable exports of `model_hash` are there, else (None, why)."""
    if onnx_dir is None:
        return None, NO_EXPORT_DIR
    from avatarforcing.engine.export.onnx_graphs import MANIFEST_NAME, ExportManifest

    path = Path(onnx_dir)
    if not (path / MANIFEST_NAME).exists():
        return None, f"no ONNX exports in {path} (run `avatarforcing graphs export --out {path}`)"
    try:
        manifest = ExportManifest.load(path)
    except (ValueError, KeyError) as error:
        return None, f"unreadable manifest in {path} ({error})"
    if model_hash is not None and manifest.model_hash != model_hash:
        return None, (
            f"ONNX exports in {path} are of another model "
            f"({manifest.model_hash[:12]}, not {model_hash[:12]}); re-export"
        )
    missing = [g.file for g in manifest.graphs if not (path / g.file).exists()]
    if missing:
        return None, f"ONNX exports in {path} lack {', '.join(missing)}"
    return path, None


def probe_capabilities(onnx_dir: str | Path | None = None, model_hash: str | None = None) -> Capabilities:
    """Look at this machine: CUDA (and its GPU), CUDA graphs, TensorRT, ONNX Runtime, exports."""
    from avatarforcing.engine.export.tensorrt_backend import tensorrt_missing

    gpu = capability = None
    if torch.cuda.is_available():
        gpu, capability, cuda_reason = torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0)), None
    elif not torch.backends.cuda.is_built():
        cuda_reason = f"PyTorch {torch.__version__} is built without CUDA"
    else:
        cuda_reason = "torch.cuda.is_available() is False (no GPU or driver)"
    trt_reason = tensorrt_missing()
    trt_version = None
    if trt_reason is None:
        import tensorrt

        trt_version = tensorrt.__version__
    try:
        ort_version, ort_reason = importlib.metadata.version("onnxruntime"), None
        import onnxruntime  # noqa: F401
    except Exception as error:
        ort_version, ort_reason = None, f"onnxruntime is not importable ({type(error).__name__}: {error})"
    exports, exports_reason = _probe_onnx_exports(onnx_dir, model_hash)
    return Capabilities(
        gpu_name=gpu,
        compute_capability=capability,
        cuda_reason=cuda_reason,
        cuda_graphs=gpu is not None and hasattr(torch.cuda, "CUDAGraph"),
        tensorrt_version=trt_version,
        tensorrt_reason=trt_reason,
        onnxruntime_version=ort_version,
        onnxruntime_reason=ort_reason,
        onnx_exports=exports,
        onnx_exports_reason=exports_reason,
    )


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str

    def log_line(self) -> str:
        return f"backend: {self.backend} ({self.reason})"


def _why_here(backend: str, caps: Capabilities) -> str:
    gpu = f"{caps.gpu_name} (sm_{caps.compute_capability[0]}{caps.compute_capability[1]})" if caps.gpu_name else ""
    if backend == "tensorrt":
        return f"CUDA on {gpu} with TensorRT {caps.tensorrt_version}"
    if backend == "cuda_graphs":
        return f"CUDA on {gpu}; TensorRT unavailable: {caps.available('tensorrt')}"
    if backend == "cuda_eager":
        return (
            f"CUDA on {gpu}; TensorRT unavailable: {caps.available('tensorrt')}; "
            f"CUDA graphs unavailable: {caps.available('cuda_graphs')}"
        )
    cpu = f"no CUDA device: {caps.cuda_reason}"
    if backend == "onnxruntime_cpu":
        return f"{cpu}; ONNX Runtime {caps.onnxruntime_version} on the CPU, {CPU_ORDER_EVIDENCE}"
    ort = caps.available("onnxruntime_cpu")
    return f"{cpu}; " + (
        f"ONNX Runtime unusable: {ort}" if ort else "PyTorch CPU preferred by the configured CPU order"
    )


def select_backend(
    caps: Capabilities | None = None,
    prefer: str | None = None,
    cpu_order: tuple[str, ...] = DEFAULT_CPU_ORDER,
) -> BackendChoice:
    """Pick the first usable backend (a usable `prefer` wins); the reason names what was skipped."""
    caps = caps or probe_capabilities()
    prefix = ""
    if prefer and prefer != "auto":
        why_not = caps.available(prefer)
        if why_not is None:
            return BackendChoice(
                prefer, f"requested; {_why_here(prefer, caps)}" if prefer != "torch_cpu" else "requested"
            )
        prefix = f"requested {prefer} is unavailable ({why_not}); "
    order = [b for b in ("tensorrt", "cuda_graphs", "cuda_eager")] + [b for b in cpu_order if b in BACKENDS]
    if "torch_cpu" not in order:
        order.append("torch_cpu")
    for backend in order:
        if caps.available(backend) is None:
            return BackendChoice(backend, prefix + _why_here(backend, caps))
    raise AssertionError("torch_cpu is always available")


@dataclass
class CpuComparison:
    """Median time per block-step call of ONNX Runtime and PyTorch on this CPU."""

    onnxruntime: Timing
    torch: Timing
    threads: int
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def order(self) -> tuple[str, str]:
        if self.onnxruntime.p50_ms <= self.torch.p50_ms:
            return ("onnxruntime_cpu", "torch_cpu")
        return ("torch_cpu", "onnxruntime_cpu")


def compare_cpu_backends(
    spec: GraphSpec, onnx_path: str | Path, threads: int = 2, repeats: int = 7, rounds: int = 2
) -> CpuComparison:
    """Time ONNX Runtime and PyTorch on `spec.example` in alternating rounds (the machine is
    shared: medians over all rounds)."""
    from avatarforcing.engine.export.onnx_runtime import OrtRunner

    torch.set_num_threads(threads)
    runner = OrtRunner(onnx_path, threads)
    clock = StageClock()
    ort_seconds: list[float] = []
    torch_seconds: list[float] = []
    for _ in range(rounds):  # alternating rounds, each with one untimed warm-up call
        runner(spec.example)
        ort_seconds += [clock.timed(lambda: runner(spec.example))[1] for _ in range(repeats)]
        spec.run_eager(spec.example)
        torch_seconds += [clock.timed(lambda: spec.run_eager(spec.example))[1] for _ in range(repeats)]
    return CpuComparison(summarize(ort_seconds), summarize(torch_seconds), threads)


__all__ = [
    "BACKENDS",
    "DEFAULT_CPU_ORDER",
    "BackendChoice",
    "Capabilities",
    "CpuComparison",
    "compare_cpu_backends",
    "probe_capabilities",
    "select_backend",
]
