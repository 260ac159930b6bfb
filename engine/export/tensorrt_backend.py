"""TensorRT engines for the exported graphs (TensorRT >= 10 Python API), cached on disk.

Build (per graph; `build_engine`):
  `trt.Builder(logger)` -> `builder.create_network(0)` (explicit batch is implicit since 10.0)
  -> `trt.OnnxParser(network, logger).parse_from_file(path)` (errors via `num_errors` /
  `get_error(i)`) -> `builder.create_builder_config()` with
  `set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bytes)`, a timing cache
  (`config.create_timing_cache(bytes)` + `config.set_timing_cache(cache, ignore_mismatch=False)`,
  written back with `config.get_timing_cache().serialize()`), an optional
  `trt.IProgressMonitor` (`config.progress_monitor`) -> `builder.build_serialized_network`.

Precision: TensorRT 10.x builds fp16/bf16 from the float32 ONNX with `BuilderFlag.FP16` /
`BuilderFlag.BF16` (weak typing). TensorRT 11 removed those flags (networks are always strongly
typed); there the float32 ONNX is first converted with NVIDIA ModelOpt AutoCast
(`modelopt.onnx.autocast.convert_to_mixed_precision(onnx_path, low_precision_type,
keep_io_types=True)`); without ModelOpt the engine is built in float32 and the log says so.

Run (`TensorRTRunner`): `trt.Runtime(logger).deserialize_cuda_engine(bytes)` ->
`engine.create_execution_context()`; I/O tensors are enumerated by name
(`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `get_tensor_shape`,
`get_tensor_dtype`), backed by torch CUDA tensors bound once with
`context.set_tensor_address(name, tensor.data_ptr())`, and executed with
`context.execute_async_v3(stream_handle)` on a private stream, captured into a CUDA graph
after the first call where the engine allows it.

Engine cache (`EngineCache`): an engine file is keyed by GPU name + compute capability +
TensorRT version + model hash + ONNX file hash + graph + I/O shapes + precision (`EngineKey`);
the key's digest is in the file name and the full key in a JSON sidecar, so an engine built
for another GPU or TensorRT version is never deserialised here: it is reported in one log line
and rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from avatarforcing.engine.export.onnx_graphs import ExportManifest

PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_WORKSPACE_BYTES = 4 << 30
Log = Callable[[str], None]
Progress = Callable[[str, int, int], None]  # (phase, steps done, steps total)

_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "BOOL": torch.bool,
}


class TensorRTUnavailable(RuntimeError):
    """TensorRT cannot be used here (not installed, no CUDA, ...); the message says why."""


class TensorRTBuildError(RuntimeError):
    """Parsing or building an engine failed; the message carries TensorRT's errors."""


def import_tensorrt():
    """The `tensorrt` module, or `TensorRTUnavailable` with the import error."""
    try:
        import tensorrt as trt
    except Exception as error:
        raise TensorRTUnavailable(f"tensorrt is not importable ({type(error).__name__}: {error})") from error
    return trt


def tensorrt_missing() -> str | None:
    """None when `import tensorrt` works, else the reason (for logs and skip messages)."""
    try:
        import_tensorrt()
    except TensorRTUnavailable as error:
        return str(error)
    return None


def tensorrt_major(version: str) -> int:
    return int(version.split(".")[0])


# -- cache keys -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceIdentity:
    """The GPU an engine is built for."""

    name: str
    compute_capability: tuple[int, int]

    @classmethod
    def current(cls, device: int | str | torch.device = 0) -> DeviceIdentity:
        if not torch.cuda.is_available():
            raise TensorRTUnavailable("no CUDA device (torch.cuda.is_available() is False)")
        return cls(torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device)))

    @property
    def slug(self) -> str:
        name = re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower()
        return f"{name}-sm{self.compute_capability[0]}{self.compute_capability[1]}"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two keys are equal iff the engine may be reused."""

    graph: str
    precision: str
    model_hash: str
    onnx_sha256: str
    shapes: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype) of every input/output
    gpu_name: str
    compute_capability: tuple[int, int]
    tensorrt_version: str

    @classmethod
    def for_graph(
        cls, manifest: ExportManifest, graph: str, precision: str, device: DeviceIdentity, tensorrt_version: str
    ) -> EngineKey:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        record = manifest.graph(graph)
        shapes = tuple((s.name, tuple(s.shape), s.dtype) for s in [*record.inputs, *record.outputs])
        return cls(
            graph,
            precision,
            manifest.model_hash,
            record.sha256,
            shapes,
            device.name,
            tuple(device.compute_capability),
            tensorrt_version,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["shapes"] = [[n, list(s), d] for n, s, d in self.shapes]
        data["compute_capability"] = list(self.compute_capability)
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> EngineKey:
        values = dict(data)
        values["shapes"] = tuple((n, tuple(s), d) for n, s, d in data["shapes"])
        values["compute_capability"] = tuple(data["compute_capability"])
        return cls(**values)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    @property
    def device(self) -> DeviceIdentity:
        return DeviceIdentity(self.gpu_name, self.compute_capability)

    def file_name(self) -> str:
        version = re.sub(r"[^0-9A-Za-z.]+", "-", self.tensorrt_version)
        return f"{self.graph}.{self.precision}.{self.device.slug}.trt{version}.{self.digest()[:16]}.engine"

    def differences(self, other: EngineKey) -> list[str]:
        """Human-readable fields in which `other` (a cached engine) differs from this key."""
        labels = {
            "gpu_name": "GPU",
            "compute_capability": "compute capability",
            "tensorrt_version": "TensorRT",
            "model_hash": "model",
            "onnx_sha256": "ONNX file",
            "shapes": "shapes",
            "precision": "precision",
            "graph": "graph",
        }
        out = []
        for name, label in labels.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name in ("model_hash", "onnx_sha256"):
                    mine, theirs = mine[:12], theirs[:12]
                elif name == "shapes":
                    mine, theirs = "this export", "another export"
                elif name == "compute_capability":
                    mine, theirs = "sm_{}{}".format(*mine), "sm_{}{}".format(*theirs)
                out.append(f"{label} {theirs} (here {mine})")
        return out


class EngineCache:
    """Serialized engines under `root`: `<key.file_name()>` plus a `.json` sidecar holding the key."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / key.file_name()

    def _sidecar(self, engine_path: Path) -> Path:
        return engine_path.with_suffix(".json")

    def cached_keys(self, graph: str | None = None) -> list[tuple[Path, EngineKey]]:
        """Every cached engine (optionally of one graph) whose sidecar is readable."""
        found = []
        for sidecar in sorted(self.root.glob("*.json")):
            try:
                key = EngineKey.from_dict(json.loads(sidecar.read_text()))
            except (ValueError, KeyError, TypeError):
                continue
            engine = sidecar.with_suffix(".engine")
            if engine.exists() and (graph is None or key.graph == graph):
                found.append((engine, key))
        return found

    def lookup(self, key: EngineKey, log: Log | None = None) -> Path | None:
        """The engine file for exactly `key`, or None. When engines of the same graph exist for
        another GPU/TensorRT/model, one log line says what differs and that it will be rebuilt."""
        path = self.engine_path(key)
        if path.exists() and self._sidecar(path).exists():
            stored = EngineKey.from_dict(json.loads(self._sidecar(path).read_text()))
            if stored == key:
                return path
        if log:
            others = [k for _, k in self.cached_keys(key.graph) if k != key]
            if others:
                closest = min(others, key=lambda k: len(key.differences(k)))
                log(
                    f"engine cache: the cached {key.graph} engine was built for "
                    f"{', '.join(key.differences(closest))}; not loadable here, rebuilding"
                )
        return None

    def store(self, key: EngineKey, engine: bytes) -> Path:
        """Write the engine and its sidecar (atomically: temp file + rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.engine_path(key)
        for target, data in ((path, engine), (self._sidecar(path), json.dumps(key.to_dict(), indent=1).encode())):
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        return path

    def timing_cache_path(self, device: DeviceIdentity, tensorrt_version: str) -> Path:
        """Timing caches are per GPU and TensorRT version too."""
        return self.root / f"timing.{device.slug}.trt{tensorrt_version}.cache"


# -- building -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    optimization_level: int | None = None  # BuilderConfig.builder_optimization_level (0-5), None: default 3


def _progress_monitor(trt, progress: Progress):
    """A `trt.IProgressMonitor` forwarding (phase, step, steps) to `progress`."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.steps[phase_name] = num_steps
            progress(phase_name, 0, num_steps)

        def step_complete(self, phase_name, step):
            progress(phase_name, step + 1, self.steps.get(phase_name, step + 1))
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            total = self.steps.pop(phase_name, 0)
            progress(phase_name, total, total)

    return Monitor()


def mixed_precision_onnx(onnx_path: Path, precision: str, out_path: Path) -> Path:
    """TensorRT 11: float32 ONNX -> mixed fp16/bf16 ONNX with ModelOpt AutoCast (float32 I/O)."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    converted = convert_to_mixed_precision(onnx_path=str(onnx_path), low_precision_type=precision, keep_io_types=True)
    onnx.save(converted, str(out_path))
    return out_path


def build_engine(
    onnx_path: str | Path,
    options: BuildOptions,
    timing_cache: Path | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
) -> bytes:
    """Parse `onnx_path` and build a serialized engine (see module docstring for the calls)."""
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    major = tensorrt_major(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    source = onnx_path
    weak_precision = options.precision
    if options.precision != "fp32" and major >= 11:
        weak_precision = "fp32"
        try:
            source = mixed_precision_onnx(
                onnx_path, options.precision, onnx_path.with_suffix(f".{options.precision}.onnx")
            )
        except ImportError:
            if log:
                log(
                    f"TensorRT {trt.__version__} builds only strongly typed networks and ModelOpt "
                    f"(nvidia-modelopt) is not installed: building {onnx_path.name} in fp32, not {options.precision}"
                )
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TensorRTBuildError(f"TensorRT could not parse {source}: " + " | ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    if weak_precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif weak_precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt, progress) if progress and hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT failed to build an engine from {source} (see the TensorRT log above)")
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        timing_cache.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


# -- running -------------------------------------------------------------------------------------
class TensorRTRunner:
    """Executes one engine: `runner(feeds)` -> {output name: CUDA tensor} (clones).

    Inputs not given keep their previous values (set constant inputs once).
    """

    def __init__(
        self, engine: bytes, device: str | torch.device = "cuda", use_cuda_graph: bool = True, log: Log | None = None
    ) -> None:
        trt = import_tensorrt()
        self.device = torch.device(device)
        self.log = log
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise TensorRTBuildError(
                "deserialize_cuda_engine returned None (engine from another GPU or TensorRT version?)"
            )
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            shape = tuple(self.engine.get_tensor_shape(name))
            dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]
            tensor = torch.zeros(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, tensor.data_ptr())
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs)[name] = tensor
        self.stream = torch.cuda.Stream(self.device)
        self.use_cuda_graph = use_cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def set_inputs(self, feeds: Mapping[str, Tensor]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # feeds made on the caller's stream
        with torch.cuda.stream(self.stream):
            for name, value in feeds.items():
                self.inputs[name].copy_(value, non_blocking=True)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("IExecutionContext.execute_async_v3 failed")

    def run(self) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if self.graph is not None:
            with torch.cuda.stream(self.stream):
                self.graph.replay()
        else:
            self._enqueue()  # also the warm-up TensorRT asks for before a capture
            if self.use_cuda_graph and self.calls == 0:
                self._capture()
        self.calls += 1

    def _capture(self) -> None:
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._enqueue()
        except RuntimeError as error:
            self.use_cuda_graph = False
            if self.log:
                self.log(f"TensorRT engine not capturable as a CUDA graph ({error}); using execute_async_v3 per call")
            return
        self.graph = graph

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.set_inputs(feeds)
        self.run()
        with torch.cuda.stream(self.stream):
            outputs = {n: t.clone() for n, t in self.outputs.items()}
        self.stream.synchronize()
        return outputs


def ensure_engines(
    onnx_dir: str | Path,
    cache_dir: str | Path,
    graphs: Sequence[str] | None = None,
    options: BuildOptions | None = None,
    device: int = 0,
    progress: Progress | None = None,
    log: Log | None = None,
) -> dict[str, Path]:
    """Engine files for the exported graphs in `onnx_dir` on this GPU, building (and caching)
    the missing ones. Returns {graph: engine path}."""
    trt = import_tensorrt()
    options = options or BuildOptions()
    manifest = ExportManifest.load(onnx_dir)
    identity = DeviceIdentity.current(device)
    cache = EngineCache(cache_dir)
    paths = {}
    for name in graphs or [g.name for g in manifest.graphs]:
        key = EngineKey.for_graph(manifest, name, options.precision, identity, trt.__version__)
        path = cache.lookup(key, log)
        if path is None:
            if log:
                log(
                    f"building TensorRT {options.precision} engine for {name} on {identity.name} "
                    f"(TensorRT {trt.__version__})"
                )
            engine = build_engine(
                Path(onnx_dir) / manifest.graph(name).file,
                options,
                cache.timing_cache_path(identity, trt.__version__),
                progress,
                log,
            )
            path = cache.store(key, engine)
        paths[name] = path
    return paths


def load_or_build_engines(
    onnx_dir: str | Path,
    cache_dir: str | Path,
    graphs: Sequence[str] | None = None,
    options: BuildOptions | None = None,
    device: int = 0,
    progress: Progress | None = None,
    log: Log | None = None,
    use_cuda_graph: bool = True,
) -> dict[str, TensorRTRunner]:
    """Runners for the exported graphs (what a session calls once at start-up; cached engines
    load in seconds, missing ones are built first)."""
    paths = ensure_engines(onnx_dir, cache_dir, graphs, options, device, progress, log)
    return {
        name: TensorRTRunner(path.read_bytes(), f"cuda:{device}", use_cuda_graph, log) for name, path in paths.items()
    }


def engine_build_main(
    onnx_dir: str | Path,
    cache_dir: str | Path,
    precision: str = "fp16",
    graphs: Sequence[str] | None = None,
    progress: Progress | None = None,
    log: Log = print,
) -> int:
    """`avatarforcing graphs build`: build the engines of an export directory for this GPU.

    `progress(phase, done, total)` drives a progress bar. Returns 0 when every engine is
    ready, 1 when a build failed, 2 when TensorRT cannot be used here (the reason is logged).
    """
    try:
        paths = ensure_engines(onnx_dir, cache_dir, graphs, BuildOptions(precision), progress=progress, log=log)
    except TensorRTUnavailable as error:
        log(f"cannot build TensorRT engines here: {error}")
        return 2
    except TensorRTBuildError as error:
        log(f"TensorRT build failed: {error}")
        return 1
    for name, path in paths.items():
        log(f"{name}: {path}")
    return 0


__all__ = [
    "PRECISIONS",
    "BuildOptions",
    "DeviceIdentity",
    "EngineCache",
    "EngineKey",
    "TensorRTBuildError",
    "TensorRTRunner",
    "TensorRTUnavailable",
    "build_engine",
    "engine_build_main",
    "ensure_engines",
    "import_tensorrt",
    "load_or_build_engines",
    "mixed_precision_onnx",
    "tensorrt_missing",
]
