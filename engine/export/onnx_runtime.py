"""ONNX Runtime execution of the exported graphs, parity checks against PyTorch, and the
`avatarforcing graphs export` entry point.

`check_exports(model, out_dir)` runs every graph of the manifest in ONNX Runtime (CPU) on fresh
example inputs and compares with the PyTorch module: the maximum absolute difference per graph
must stay within `tolerance * max(1, max|PyTorch output|)`. A graph beyond that limit is judged
against a float64 run of the PyTorch module instead: it passes when ONNX Runtime is no further
from float64 than twice PyTorch float32's own distance (the official-size decoder needs this:
its PyTorch float32 output moves by ~3e-2 against float64, ONNX Runtime's by ~5e-3). It then
runs a multi-block rollout in ONNX Runtime (the caches and context go around the loop) and
compares the latents with `MotionStream` in PyTorch given the same noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from avatarforcing.engine.benchmarking import Timing, time_calls
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.export.graph_specs import (
    CACHE_NAMES,
    GRAPH_NAMES,
    ExportSettings,
    build_graph_specs,
    model_hash,
    numpy_feeds,
)
from avatarforcing.engine.export.onnx_graphs import ExportError, ExportManifest, export_all
from avatarforcing.engine.export.rollout import rollout_frames, rollout_latents, rollout_noise
from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream, StoredNoise, generate

# Parity tolerances, relative to max(1, max |PyTorch output|) of each graph. The generator,
# encoder and audio graphs agree to ~1e-6 in float32; the decoder's deep modulated-conv +
# grid_sample chain differs from float64 by ~2e-4 relative in PyTorch float32 itself.
DEFAULT_TOLERANCES = {
    "first_clip": 1e-4,
    "block_step": 1e-4,
    "decoder": 1e-3,
    "motion_encoder": 1e-4,
    "audio_window": 1e-4,
    "rollout": 1e-3,
}
CONFIGS: dict[str, Callable[[], ModelConfig]] = {
    "fixture_small": ModelConfig.fixture_small,
    "official": ModelConfig.official,
}
Log = Callable[[str], None]


class OrtRunner:
    """One ONNX Runtime session; `runner(feeds)` takes and returns named torch tensors (CPU)."""

    def __init__(
        self, path: str | Path, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # idle pool threads would busy-wait for the next call: in a live session that steals the
        # cores the capture, render and pacer threads need between blocks
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        arrays = numpy_feeds({n: feeds[n] for n in self.input_names})
        results = self.session.run(list(self.output_names), arrays)
        return {n: torch.from_numpy(r) for n, r in zip(self.output_names, results)}


@dataclass
class GraphCheck:
    """ONNX Runtime vs PyTorch for one graph on one set of inputs."""

    name: str
    max_abs_diff: float
    per_output: dict[str, float]
    reference_scale: float  # max(1, max |PyTorch output|)
    tolerance: float  # relative to reference_scale
    ort_time: Timing | None = None
    torch_time: Timing | None = None
    ort_vs_float64: float | None = None  # set when the float32 limit was exceeded
    torch_vs_float64: float | None = None

    @property
    def limit(self) -> float:
        return self.tolerance * self.reference_scale

    @property
    def within_float32_rounding(self) -> bool:
        """ORT is no further from float64 than twice PyTorch float32 is."""
        if self.ort_vs_float64 is None or self.torch_vs_float64 is None:
            return False
        return self.ort_vs_float64 <= max(2.0 * self.torch_vs_float64, self.limit)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit or self.within_float32_rounding

    def line(self) -> str:
        text = (
            f"{self.name:<15} max|ORT-PyTorch| {self.max_abs_diff:.2e}  (limit {self.limit:.1e})  "
            f"{'ok' if self.passed else 'FAIL'}"
        )
        if self.ort_vs_float64 is not None:
            text += (
                f"  [vs float64: ORT {self.ort_vs_float64:.2e}, PyTorch float32 {self.torch_vs_float64:.2e}"
                f"{': float32 rounding' if self.within_float32_rounding else ''}]"
            )
        if self.ort_time and self.torch_time:
            text += f"  ORT {self.ort_time.p50_ms:.1f} ms, PyTorch {self.torch_time.p50_ms:.1f} ms (median)"
        return text


@dataclass
class RolloutCheck:
    """Multi-block rollout in ONNX Runtime vs `MotionStream` in PyTorch."""

    blocks: int
    max_abs_diff: float
    cache_max_abs_diff: float
    reference_scale: float
    tolerance: float

    @property
    def limit(self) -> float:
        return self.tolerance * self.reference_scale

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit and self.cache_max_abs_diff <= self.limit

    def line(self) -> str:
        return (
            f"{'rollout':<15} {self.blocks} blocks after the first clip: latents max diff {self.max_abs_diff:.2e}, "
            f"caches {self.cache_max_abs_diff:.2e}  (limit {self.limit:.1e})  {'ok' if self.passed else 'FAIL'}"
        )


@dataclass
class ExportCheckReport:
    graphs: list[GraphCheck] = field(default_factory=list)
    rollout: RolloutCheck | None = None

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.graphs) and (self.rollout is None or self.rollout.passed)

    def graph(self, name: str) -> GraphCheck:
        return next(g for g in self.graphs if g.name == name)

    def lines(self) -> list[str]:
        lines = [g.line() for g in self.graphs]
        if self.rollout:
            lines.append(self.rollout.line())
        lines.append("parity: " + ("PASSED" if self.passed else "FAILED"))
        return lines


def _max_abs(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def _scale(tensors: Sequence[Tensor]) -> float:
    return max([1.0] + [float(t.abs().max()) for t in tensors if t.numel()])


def _tolerance(name: str, tolerance: float | None) -> float:
    return DEFAULT_TOLERANCES[name] if tolerance is None else tolerance


def float64_distances(spec, got: Mapping[str, Tensor]) -> tuple[float, float]:
    """(max |ORT - float64|, max |PyTorch float32 - float64|) over the outputs, where float64
    is a float64 copy of the spec's module run on the same inputs."""
    module = copy.deepcopy(spec.module).double()
    feeds = {n: t.double() if t.is_floating_point() else t for n, t in spec.example.items()}
    with torch.no_grad():
        result = module(*(feeds[n] for n in spec.input_names))
    result = (result,) if isinstance(result, Tensor) else result
    exact = dict(zip(spec.output_names, result))
    ort = max(_max_abs(got[n], exact[n]) for n in spec.output_names)
    pytorch = max(_max_abs(spec.reference[n], exact[n]) for n in spec.output_names)
    return ort, pytorch


def rollout_check(
    model: AvatarForcingModel,
    first_clip,
    block_step,
    settings: ExportSettings,
    blocks: int = 3,
    tolerance: float | None = None,
    seed: int = 2,
) -> RolloutCheck:
    """Run `blocks` blocks after the first clip with the given runners and compare with
    `MotionStream` (PyTorch, same noise)."""
    cfg = model.cfg
    batch, frames = settings.batch, rollout_frames(cfg, blocks)
    gen = torch.Generator().manual_seed(seed)
    conditions = [torch.randn(batch, frames, cfg.dim_w, generator=gen) * s for s in (1.0, 1.0, 0.3)]
    r_s = torch.randn(batch, cfg.dim_w, generator=gen) * 0.3
    guidance = GuidanceScales()
    noise = rollout_noise(cfg, blocks, batch, seed)
    sampler = FlowMatchingEulerSampler(settings.nfe, cfg.num_train_timestep)
    stream = MotionStream(model.flow_transformer, r_s, sampler, guidance, noise=StoredNoise(noise))
    with torch.no_grad():
        reference = generate(stream, *conditions)
    latents, caches = rollout_latents(cfg, first_clip, block_step, conditions, r_s, guidance.as_tensor(), noise)
    cache_diff = max(_max_abs(caches[n], getattr(stream.state, n)) for n in CACHE_NAMES)
    return RolloutCheck(
        blocks, _max_abs(latents, reference), cache_diff, _scale([reference]), _tolerance("rollout", tolerance)
    )


def check_exports(
    model: AvatarForcingModel,
    out_dir: str | Path,
    tolerance: float | None = None,
    rollout_blocks: int = 3,
    threads: int | None = None,
    timing_repeats: int = 0,
    seed: int = 1,
    graphs: Sequence[str] | None = None,
    float64_fallback: bool = True,
) -> ExportCheckReport:
    """Compare the exported graphs in `out_dir` (all, or `graphs`) with `model` (CPU, float32).

    `tolerance` (relative to max(1, max|output|)) overrides `DEFAULT_TOLERANCES` for every
    graph; `float64_fallback` judges a graph beyond it against float64 (module docstring). With `timing_repeats` > 0, the median time per call of ONNX Runtime and PyTorch is
    measured too. Raises `ValueError` when the exports were made from other weights/settings.
    """
    out = Path(out_dir)
    manifest = ExportManifest.load(out)
    expected = model_hash(model, model.cfg.to_dict(), manifest.settings)
    if expected != manifest.model_hash:
        raise ValueError(
            f"{out} holds exports of model {manifest.model_hash[:12]}, not of this model ({expected[:12]})"
        )
    names = [g.name for g in manifest.graphs if graphs is None or g.name in graphs]
    specs = {s.name: s for s in build_graph_specs(model, manifest.settings, names, seed)}
    runners = {name: OrtRunner(out / manifest.graph(name).file, threads) for name in names}
    report = ExportCheckReport()
    for name in names:
        spec, runner = specs[name], runners[name]
        got = runner(spec.example)
        per_output = {n: _max_abs(got[n], spec.reference[n]) for n in spec.output_names}
        scale = _scale(list(spec.reference.values()))
        check = GraphCheck(name, max(per_output.values()), per_output, scale, _tolerance(name, tolerance))
        if float64_fallback and check.max_abs_diff > check.limit:
            check.ort_vs_float64, check.torch_vs_float64 = float64_distances(spec, got)
        if timing_repeats:
            check.ort_time = time_calls(lambda: runner(spec.example), timing_repeats)  # noqa: B023 - called within this iteration
            check.torch_time = time_calls(lambda: spec.run_eager(spec.example), timing_repeats)  # noqa: B023 - called within this iteration
        report.graphs.append(check)
    if rollout_blocks and {"first_clip", "block_step"} <= set(names):
        report.rollout = rollout_check(
            model, runners["first_clip"], runners["block_step"], manifest.settings, rollout_blocks, tolerance
        )
    return report


def engine_export_main(
    out_dir: str | Path,
    config_name: str = "fixture_small",
    check: bool = False,
    tolerance: float | None = None,
    *,
    model: AvatarForcingModel | None = None,
    settings: ExportSettings | None = None,
    graphs: Sequence[str] = GRAPH_NAMES,
    threads: int | None = None,
    log: Log = print,
) -> int:
    """`avatarforcing graphs export --out DIR [--check]`: export (and check) the graphs.

    Uses `model` when given, else the formula-weight model of `config_name` (speed and parity
    do not depend on the weight values). Without `tolerance`, the per-graph defaults apply with
    float64 arbitration; an explicit `tolerance` is a strict bound against PyTorch float32.
    Returns 0 on success, 1 when a graph is beyond the tolerance, 2 when a graph cannot be
    exported or the config name is unknown.
    """
    if threads:
        torch.set_num_threads(threads)
    if model is None:
        if config_name not in CONFIGS:
            log(f"unknown config {config_name!r}; choose from {', '.join(CONFIGS)}")
            return 2
        model = AvatarForcingModel.with_formula_weights(CONFIGS[config_name]())
    try:
        manifest = export_all(model, out_dir, settings, graphs, log=log)
    except ExportError as error:
        log(f"export failed: {error}")
        return 2
    log(f"wrote {len(manifest.graphs)} graphs and {Path(out_dir) / 'manifest.json'} (model {manifest.model_hash[:12]})")
    if not check:
        return 0
    report = check_exports(model, out_dir, tolerance, threads=threads, float64_fallback=tolerance is None)
    for line in report.lines():
        log(line)
    return 0 if report.passed else 1


__all__ = [
    "CONFIGS",
    "DEFAULT_TOLERANCES",
    "ExportCheckReport",
    "GraphCheck",
    "OrtRunner",
    "RolloutCheck",
    "check_exports",
    "engine_export_main",
    "float64_distances",
    "rollout_check",
]
