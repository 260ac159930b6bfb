"""Matching file tensors onto a module's parameters, strictly, with a report by name.

Each weight source (a file or folder) has a `WeightSource`: which parameter-name prefixes it
owns, which it must provide completely, which key prefixes to strip (`module.` from
DataParallel) or add (`motion_autoencoder.` for a standalone autoencoder file), and which keys
it carries that are deliberately unused (`lm_head.` of a CTC checkpoint). Weight-norm names are
interchangeable: `weight_g`/`weight_v` <-> `parametrizations.weight.original0/original1`.

Everything is checked before anything is copied: a strict load that fails leaves the module
untouched. Buffers are never loaded (they are rebuilt from the parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from avatarforcing.engine.checkpoint_io import CheckpointError, TensorFile

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
WEIGHT_NORM_ALIASES = (
    ("weight_g", "parametrizations.weight.original0"),
    ("weight_v", "parametrizations.weight.original1"),
)
# Parameters that exist in the module but are never used at inference; a file may lack them.
UNUSED_AT_INFERENCE = ("masked_spec_embed",)  # wav2vec2's SpecAugment mask embedding
LIST_LIMIT = 10


@dataclass(frozen=True)
class WeightSource:
    """How one weight source maps onto the module's parameter names."""

    label: str  # short name used in messages, e.g. "motion_autoencoder.pth"
    owns: tuple[str, ...]  # parameter-name prefixes this source may provide
    requires: tuple[str, ...]  # prefixes it must provide completely (after earlier sources)
    add_prefixes: tuple[str, ...] = ()  # tried, in order, in front of keys that are not full names
    strip_prefixes: tuple[str, ...] = WRAPPER_PREFIXES  # removed from the front of keys
    ignore_prefixes: tuple[str, ...] = ()  # keys (after stripping) that are deliberately unused
    missing_hint: str = ""  # appended to the list of missing keys


@dataclass(frozen=True)
class ShapeMismatch:
    """A file tensor whose shape (or dtype kind) does not fit the parameter it names."""

    key: str
    file_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    file_dtype: str = ""
    model_dtype: str = ""

    def __str__(self) -> str:
        text = f"{self.key}: file {list(self.file_shape)} vs model {list(self.model_shape)}"
        if self.file_dtype != self.model_dtype and self.file_shape == self.model_shape:
            text += f" (dtype {self.file_dtype} cannot be copied into {self.model_dtype})"
        return text


@dataclass
class SourceReport:
    """What one source provided. Names in `loaded`, `missing`, `overridden` are parameter names;
    `unexpected` and `ignored` are the file's own keys."""

    label: str
    path: str
    tensors_in_file: int = 0
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # buffers and deliberately unused keys
    overridden: list[str] = field(default_factory=list)  # also provided by an earlier source
    absent_unused: list[str] = field(default_factory=list)  # missing but unused at inference
    foreign: dict[str, str] = field(default_factory=dict)  # file key -> which parameter/source it is
    duplicates: list[str] = field(default_factory=list)  # several file keys naming one parameter
    config_mismatches: list[str] = field(default_factory=list)
    missing_hint: str = ""
    wholly_missing: dict[str, int] = field(default_factory=dict)  # prefix -> count, all of it absent

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.duplicates or self.config_mismatches)


@dataclass
class LoadReport:
    """Outcome of a load, per source. `applied` is False when nothing was copied."""

    sources: list[SourceReport]
    strict: bool = True
    applied: bool = False

    @property
    def ok(self) -> bool:
        return all(source.ok for source in self.sources)

    @property
    def loaded(self) -> list[str]:
        return _unique(name for s in self.sources for name in s.loaded)

    @property
    def missing(self) -> list[str]:
        return [name for s in self.sources for name in s.missing]

    @property
    def unexpected(self) -> list[str]:
        return [name for s in self.sources for name in s.unexpected]

    @property
    def mismatched(self) -> list[ShapeMismatch]:
        return [m for s in self.sources for m in s.mismatched]

    def source(self, label: str) -> SourceReport:
        for report in self.sources:
            if report.label == label:
                return report
        raise KeyError(label)

    def format(self, limit: int = LIST_LIMIT) -> str:
        """Human-readable summary: per source, its problems by name (lists truncated to `limit`)."""
        lines = []
        for s in self.sources:
            where = f" ({s.path})" if s.path else ""
            lines.append(f"{s.label}{where}: {len(s.loaded)} loaded")
            if s.config_mismatches:
                lines.append(f"  config does not match the model: {'; '.join(s.config_mismatches)}")
            if s.missing:
                lines.append(
                    f"  missing {len(s.missing)} parameter(s){': ' + s.missing_hint if s.missing_hint else ''}"
                )
                lines.extend(_bullets(_missing_lines(s), limit))
            if s.unexpected:
                lines.append(f"  unexpected {len(s.unexpected)} key(s):")
                labelled = [k + (f"  ({s.foreign[k]})" if k in s.foreign else "") for k in s.unexpected]
                lines.extend(_bullets(labelled, limit))
            if s.mismatched:
                lines.append(f"  shape mismatch in {len(s.mismatched)} key(s):")
                lines.extend(_bullets([str(m) for m in s.mismatched], limit))
            if s.duplicates:
                lines.append(f"  several keys name the same parameter: {'; '.join(s.duplicates[:limit])}")
            if s.tensors_in_file and not s.loaded and (s.unexpected or s.mismatched):
                lines.append(
                    f"  none of its {s.tensors_in_file} tensors fit the model: is this the right file "
                    "(files swapped?) and the right model configuration?"
                )
            if s.absent_unused:
                lines.append(f"  note: absent but unused at inference: {', '.join(s.absent_unused)}")
        return "\n".join(lines)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _missing_lines(report: SourceReport) -> list[str]:
    """Missing names, with wholly absent prefixes collapsed into one line each."""
    lines = [f"{prefix}* (all {count})" for prefix, count in report.wholly_missing.items()]
    covered = tuple(report.wholly_missing)
    return lines + [name for name in report.missing if not (covered and name.startswith(covered))]


def _bullets(items: Sequence[str], limit: int) -> list[str]:
    shown = [f"    - {item}" for item in items[:limit]]
    if len(items) > limit:
        shown.append(f"    ... and {len(items) - limit} more")
    return shown


def weight_norm_alias(name: str) -> str | None:
    """The other spelling of a weight-norm parameter name, or None."""
    for legacy, parametrized in WEIGHT_NORM_ALIASES:
        if name.endswith("." + legacy) or name == legacy:
            return name[: -len(legacy)] + parametrized
        if name.endswith("." + parametrized) or name == parametrized:
            return name[: -len(parametrized)] + legacy
    return None


def stripped_forms(key: str, strip_prefixes: Sequence[str]) -> list[str]:
    """`key`, then `key` with wrapper prefixes removed one after another from the front."""
    forms = [key]
    changed = True
    while changed:
        changed = False
        for prefix in strip_prefixes:
            if forms[-1].startswith(prefix):
                forms.append(forms[-1][len(prefix) :])
                changed = True
                break
    return forms


def candidate_names(key: str, spec: WeightSource) -> Iterator[str]:
    """Parameter names a file key may stand for, most literal first."""
    for base in stripped_forms(key, spec.strip_prefixes):
        for name in (base, *(prefix + base for prefix in spec.add_prefixes)):
            yield name
            alias = weight_norm_alias(name)
            if alias is not None:
                yield alias


def _owned(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def _compatible(tensor: Tensor, param: Tensor) -> bool:
    if param.is_floating_point():
        return tensor.is_floating_point()
    return tensor.dtype == param.dtype


def match_source(
    spec: WeightSource,
    file: TensorFile,
    params: Mapping[str, Tensor],
    is_buffer: Callable[[str], bool],
) -> tuple[SourceReport, dict[str, Tensor]]:
    """Resolve every file key to a parameter name. Returns the report (without `missing`) and
    the accepted tensors by parameter name. Nothing is copied."""
    report = SourceReport(label=spec.label, path=str(file.path), tensors_in_file=len(file.tensors))
    accepted: dict[str, Tensor] = {}
    source_key: dict[str, str] = {}
    for key, tensor in file.tensors.items():
        if any(form.startswith(p) for form in stripped_forms(key, spec.strip_prefixes) for p in spec.ignore_prefixes):
            report.ignored.append(key)
            continue
        candidates = list(candidate_names(key, spec))
        known = [name for name in candidates if name in params]
        owned = [name for name in known if _owned(name, spec.owns)]
        if owned:
            name = owned[0]
            param = params[name]
            if tuple(tensor.shape) != tuple(param.shape) or not _compatible(tensor, param):
                report.mismatched.append(
                    ShapeMismatch(name, tuple(tensor.shape), tuple(param.shape), str(tensor.dtype), str(param.dtype))
                )
            elif name in accepted:
                report.duplicates.append(f"{source_key[name]} and {key} -> {name}")
            else:
                accepted[name] = tensor
                source_key[name] = key
        elif known:
            report.unexpected.append(key)
            report.foreign[key] = known[0]
        elif any(is_buffer(name) for name in candidates):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    report.unexpected.extend(f"{key} (not a tensor)" for key in file.non_tensors)
    report.loaded = list(accepted)
    return report, accepted


def assign_missing(
    reports: Sequence[SourceReport],
    specs: Sequence[WeightSource],
    params: Mapping[str, Tensor],
) -> None:
    """Fill each report's `missing`: required parameters no source provided, attributed to the
    first source that requires them. Parameters unused at inference go to `absent_unused`."""
    provided = {name for report in reports for name in report.loaded}
    mismatched = {m.key for report in reports for m in report.mismatched}
    claimed: set[str] = set()
    for report, spec in zip(reports, specs):
        report.missing_hint = spec.missing_hint
        for prefix in spec.requires:
            under = [n for n in params if n.startswith(prefix) and n.rsplit(".", 1)[-1] not in UNUSED_AT_INFERENCE]
            if prefix and len(under) > 1 and not any(n in provided or n in mismatched or n in claimed for n in under):
                report.wholly_missing[prefix] = len(under)
        for name in params:
            if name in provided or name in claimed or not _owned(name, spec.requires):
                continue
            claimed.add(name)
            if name in mismatched:
                continue  # already reported, with both shapes
            if name.rsplit(".", 1)[-1] in UNUSED_AT_INFERENCE:
                report.absent_unused.append(name)
            else:
                report.missing.append(name)


def copy_into(params: Mapping[str, Tensor], tensors: Mapping[str, Tensor]) -> None:
    """Copy `tensors` into the parameters of the same names (dtype/device converted)."""
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def load_sources(
    params: Mapping[str, Tensor],
    sources: Sequence[tuple[WeightSource, TensorFile]],
    is_buffer: Callable[[str], bool],
    *,
    strict: bool,
    config_mismatches: Mapping[str, list[str]] | None = None,
    action: str = "load checkpoints",
) -> LoadReport:
    """Match all sources, check, then copy in order (a later source overrides an earlier one).

    strict: any missing / unexpected / mismatched key or config mismatch raises one
    `CheckpointError` listing them by name, and nothing is copied. Otherwise only matching
    tensors are copied and the report says what was not.
    """
    reports, accepted = [], []
    for spec, file in sources:
        report, tensors = match_source(spec, file, params, is_buffer)
        report.config_mismatches = list((config_mismatches or {}).get(spec.label, []))
        for key, name in report.foreign.items():
            owner = next((other.label for other, _ in sources if _owned(name, other.owns)), "no source")
            where = f"belongs to {owner}" if owner != spec.label else "not expected from this source"
            report.foreign[key] = where if name == key else f"= {name}, {where}"
        reports.append(report)
        accepted.append(tensors)
    assign_missing(reports, [spec for spec, _ in sources], params)
    seen: set[str] = set()
    for report, tensors in zip(reports, accepted):
        report.overridden = [name for name in tensors if name in seen]
        seen.update(tensors)
    result = LoadReport(sources=reports, strict=strict)
    if strict and not result.ok:
        raise CheckpointError(
            f"refusing to {action}: the weights do not match the model (strict); nothing was loaded.\n"
            f"{result.format()}\n"
            "Pass strict=False to load only the matching tensors.",
            result,
        )
    for tensors in accepted:
        copy_into(params, tensors)
    result.applied = True
    return result
