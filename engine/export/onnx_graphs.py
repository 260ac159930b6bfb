"""ONNX export of the per-block graphs, with a JSON manifest.

`export_all(model, out_dir)` writes `<graph>.onnx` for every graph the model has
(`graph_specs.graphs_of`: all five of an `AvatarForcingModel`, the generator's two of a bare
`FlowTransformer`) and `manifest.json` (`ExportManifest`): graph names, files, input/output names, shapes and
dtypes, opset, exporter, file sha256, and the model hash (weights + config + export settings).

Exporters: the generator and audio graphs use the TorchScript exporter
(`torch.onnx.export(dynamo=False)`, opset 17): it is 5-10x faster than `dynamo=True` on these
unrolled sampler graphs. The decoder and motion encoder use the dynamo exporter (opset 18,
needs `onnxscript`): the TorchScript exporter fails on them because
`stylegan_layers.upfirdn2d` builds its depthwise kernel with `expand(x.shape[1], ...)`, a size
it cannot resolve ("convolution for kernel of unknown shape"). A graph whose preferred
exporter fails is retried with the other one; the manifest records which exporter made each
file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from avatarforcing.engine.export.graph_specs import (
    ExportSettings,
    GraphModel,
    GraphSpec,
    TensorSpec,
    build_graph_specs,
    model_hash,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18
EXPORTERS = ("torchscript", "dynamo")
PREFERRED_EXPORTER = {
    "first_clip": "torchscript",
    "block_step": "torchscript",
    "audio_window": "torchscript",
    "decoder": "dynamo",
    "motion_encoder": "dynamo",
}
_TWO_GB = 2**31 - 2**26  # protobuf's limit, with headroom for the graph itself

Log = Callable[[str], None]


class ExportError(RuntimeError):
    """A graph could not be exported by any exporter."""


@dataclass
class GraphRecord:
    """One exported graph in the manifest."""

    name: str
    file: str
    exporter: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str
    export_seconds: float

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["inputs"] = [s.to_dict() for s in self.inputs]
        data["outputs"] = [s.to_dict() for s in self.outputs]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> GraphRecord:
        values = dict(data)
        values["inputs"] = [TensorSpec.from_dict(s) for s in data["inputs"]]
        values["outputs"] = [TensorSpec.from_dict(s) for s in data["outputs"]]
        return cls(**values)


@dataclass
class ExportManifest:
    """Everything needed to run (and to cache engines for) a set of exported graphs."""

    model_hash: str
    config: dict
    settings: ExportSettings
    graphs: list[GraphRecord] = field(default_factory=list)
    torch_version: str = torch.__version__
    onnx_version: str = ""
    created: str = ""
    format: int = MANIFEST_FORMAT

    @property
    def opsets(self) -> dict[str, int]:
        return {g.name: g.opset for g in self.graphs}

    def graph(self, name: str) -> GraphRecord:
        for record in self.graphs:
            if record.name == name:
                return record
        raise KeyError(f"no graph {name!r} in the manifest (has {', '.join(g.name for g in self.graphs)})")

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "model_hash": self.model_hash,
            "config": self.config,
            "settings": self.settings.to_dict(),
            "torch_version": self.torch_version,
            "onnx_version": self.onnx_version,
            "created": self.created,
            "graphs": [g.to_dict() for g in self.graphs],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ExportManifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r} (expected {MANIFEST_FORMAT})")
        return cls(
            model_hash=data["model_hash"],
            config=dict(data["config"]),
            settings=ExportSettings.from_dict(data["settings"]),
            graphs=[GraphRecord.from_dict(g) for g in data["graphs"]],
            torch_version=data["torch_version"],
            onnx_version=data["onnx_version"],
            created=data["created"],
            format=data["format"],
        )

    def save(self, out_dir: str | Path) -> Path:
        path = Path(out_dir) / MANIFEST_NAME
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> ExportManifest:
        path = Path(out_dir)
        path = path / MANIFEST_NAME if path.is_dir() else path
        return cls.from_dict(json.loads(path.read_text()))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _first_line(error: BaseException, limit: int = 240) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(error).__name__}: {line[:limit]}"


def _parameter_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def export_graph(spec: GraphSpec, path: Path, exporter: str = "torchscript") -> int:
    """Export one graph to `path` with the given exporter; returns the opset used.

    Warnings (TracerWarning, the TorchScript exporter's deprecation notice) and the dynamo
    exporter's progress printing are swallowed; errors propagate.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    args = spec.example_args()
    opset = TORCHSCRIPT_OPSET if exporter == "torchscript" else DYNAMO_OPSET
    quiet = logging.getLogger("torch.onnx")  # dynamo: "torchvision is not installed" notices
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(
                    spec.module,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    do_constant_folding=True,
                )
            else:
                torch.onnx.export(
                    spec.module,
                    args,
                    str(path),
                    dynamo=True,
                    opset_version=opset,
                    input_names=list(spec.input_names),
                    output_names=list(spec.output_names),
                    external_data=_parameter_bytes(spec.module) > _TWO_GB,
                    optimize=True,
                    verbose=False,
                )
    finally:
        quiet.setLevel(level)
    return opset


def _check_onnx(path: Path, spec: GraphSpec) -> None:
    """onnx.checker on the file, and the graph's I/O names must be the spec's, in order."""
    import onnx

    onnx.checker.check_model(str(path))
    model = onnx.load(str(path), load_external_data=False)
    inputs = tuple(i.name for i in model.graph.input)
    outputs = tuple(o.name for o in model.graph.output)
    if inputs != spec.input_names or outputs != spec.output_names:
        raise ExportError(
            f"{spec.name}: exported I/O names {inputs} -> {outputs} differ from {spec.input_names} -> {spec.output_names}"
        )


def export_specs(
    specs: Sequence[GraphSpec],
    out_dir: Path,
    exporter: str | None = None,
    log: Log | None = None,
) -> list[GraphRecord]:
    """Export every spec into `out_dir` (`<name>.onnx`) with `exporter` (None: the graph's
    `PREFERRED_EXPORTER`), retrying a failure with the other exporter."""
    records = []
    for spec in specs:
        path = out_dir / f"{spec.name}.onnx"
        first = exporter or PREFERRED_EXPORTER.get(spec.name, "torchscript")
        order = [first] + [e for e in EXPORTERS if e != first]
        failures = []
        start = time.perf_counter()
        for candidate in order:
            try:
                opset = export_graph(spec, path, candidate)
                _check_onnx(path, spec)
            except Exception as error:
                failures.append(f"{candidate}: {_first_line(error)}")
                if log and candidate != order[-1]:
                    retry = order[order.index(candidate) + 1]
                    log(
                        f"export {spec.name}: {candidate} exporter failed ({_first_line(error)}); retrying with {retry}"
                    )
                continue
            seconds = time.perf_counter() - start
            records.append(
                GraphRecord(
                    spec.name,
                    path.name,
                    candidate,
                    opset,
                    list(spec.inputs),
                    list(spec.outputs),
                    file_sha256(path),
                    round(seconds, 2),
                )
            )
            if log:
                log(
                    f"export {spec.name}: {candidate} opset {opset}, {path.stat().st_size / 1e6:.1f} MB, {seconds:.1f} s"
                )
            break
        else:
            raise ExportError(f"could not export {spec.name}: " + "; ".join(failures))
    return records


def export_all(
    model: GraphModel,
    out_dir: str | Path,
    settings: ExportSettings | None = None,
    graphs: Sequence[str] | None = None,
    exporter: str | None = None,
    seed: int = 0,
    log: Log | None = None,
) -> ExportManifest:
    """Export the per-block graphs of `model` (float32, on its device) into `out_dir`;
    `graphs`: None = every graph the model has.

    Returns the manifest, also written as `out_dir/manifest.json`.
    """
    import onnx

    settings = settings or ExportSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    specs = build_graph_specs(model, settings, graphs, seed)
    records = export_specs(specs, out, exporter, log)
    manifest = ExportManifest(
        model_hash=model_hash(model, model.cfg.to_dict(), settings),
        config=model.cfg.to_dict(),
        settings=settings,
        graphs=records,
        onnx_version=onnx.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.save(out)
    return manifest


def complete_exports(
    model: GraphModel,
    out_dir: str | Path,
    settings: ExportSettings,
    graphs: Sequence[str],
    log: Log | None = None,
) -> tuple[ExportManifest, dict[str, str]]:
    """Make `out_dir` hold `graphs` of `model`: the graphs an existing manifest of the same
    model hash lists (with their files) are kept, the others exported one by one and added to
    the manifest. A graph no exporter can export is left out.

    Returns (the manifest, also saved, {graph: why its export failed})."""
    import onnx

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = model_hash(model, model.cfg.to_dict(), settings)
    kept: list[GraphRecord] = []
    if (out / MANIFEST_NAME).exists():
        try:
            old = ExportManifest.load(out)
        except (ValueError, KeyError):  # unreadable: export everything again
            old = None
        if old is not None and old.model_hash == digest:
            kept = [g for g in old.graphs if g.name in graphs and (out / g.file).exists()]
    missing = [name for name in graphs if name not in {g.name for g in kept}]
    model.eval()
    failures: dict[str, str] = {}
    records = {g.name: g for g in kept}
    for spec in build_graph_specs(model, settings, missing) if missing else []:
        try:
            (records[spec.name],) = export_specs([spec], out, log=log)
        except ExportError as error:
            failures[spec.name] = str(error)
    manifest = ExportManifest(
        model_hash=digest,
        config=model.cfg.to_dict(),
        settings=settings,
        graphs=[records[name] for name in graphs if name in records],
        onnx_version=onnx.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.save(out)
    return manifest, failures


__all__ = [
    "DYNAMO_OPSET",
    "EXPORTERS",
    "MANIFEST_NAME",
    "PREFERRED_EXPORTER",
    "TORCHSCRIPT_OPSET",
    "ExportError",
    "ExportManifest",
    "GraphRecord",
    "complete_exports",
    "export_all",
    "export_graph",
    "export_specs",
    "file_sha256",
]
