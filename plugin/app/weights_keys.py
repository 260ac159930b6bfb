"""``weights verify --load``: load the official checkpoints strictly and say which key-prefix
variant each file uses.

The released files' exact key prefixes were never seen by this project: the loader accepts
every plausible spelling (full AvatarForcing names, standalone names, ``module.``/``_orig_mod.``
wrappers, both weight-norm spellings; see docs/weights.md). `key_layout` reports, per file,
which of them the loader actually met — with one example key per kind and how many keys share
it — so the first person with the real files confirms the mapping in one command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.paths import FLOW_TRANSFORMER_FILE, MOTION_AUTOENCODER_FILE


@dataclass(frozen=True)
class KeyGroup:
    """Keys of a file that map the same way: `wrapper` stripped from their front, `added`
    put in front, landing under the model prefix `owner`; `count` keys, e.g. `example_key` →
    `example_parameter`."""

    wrapper: str
    added: str
    owner: str
    count: int
    example_key: str
    example_parameter: str


@dataclass(frozen=True)
class KeyLayout:
    """How one file's keys map onto the model's parameters: `groups`, plus `other` keys that
    name no parameter (buffers, unused or unexpected keys) and `weight_norm`, the spelling of
    weight-norm keys when the file's differs from the model's (``""`` otherwise)."""

    file: str
    tensors: int
    groups: tuple[KeyGroup, ...]
    other: int
    weight_norm: str = ""

    @property
    def variant(self) -> str:
        """``full names``, ``standalone names`` or ``mixed names``, plus the wrappers stripped."""
        kinds = {bool(g.added) for g in self.groups}
        if not kinds:
            names = "no key names a parameter"
        elif kinds == {False}:
            names = "full names"
        elif kinds == {True}:
            names = "standalone names"
        else:
            names = "mixed names"
        wrappers = sorted({g.wrapper for g in self.groups if g.wrapper})
        text = names + (f", wrapper {' and '.join(wrappers)} stripped" if wrappers else ", no wrapper prefix")
        return text + (f", weight norm as {self.weight_norm}" if self.weight_norm else "")

    def lines(self) -> list[str]:
        """The report: the variant, then one line per group."""
        lines = [f"{self.file}: {self.variant} ({self.tensors} tensors)"]
        for group in self.groups:
            lines.append(f"  {group.count} like {group.example_key} -> {group.example_parameter}")
        if self.other:
            lines.append(f"  {self.other} naming no parameter (buffers or unused keys)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``weights verify --load --json``)."""
        return {
            "file": self.file,
            "variant": self.variant,
            "tensors": self.tensors,
            "groups": [group.__dict__ for group in self.groups],
            "other": self.other,
        }


def _match(key: str, params: Mapping[str, Any], add_prefixes: Iterable[str]) -> tuple[str, str, str, bool] | None:
    """``(wrapper, added prefix, parameter, weight-norm alias used)`` for `key`, trying names
    in the loader's order (`candidate_names`), or ``None``."""
    from avatarforcing.engine.checkpoint_matching import WRAPPER_PREFIXES, stripped_forms, weight_norm_alias

    for base in stripped_forms(key, WRAPPER_PREFIXES):
        wrapper = key[: len(key) - len(base)]
        for added in ("", *add_prefixes):
            name = added + base
            if name in params:
                return wrapper, added, name, False
            alias = weight_norm_alias(name)
            if alias is not None and alias in params:
                return wrapper, added, alias, True
    return None


def key_layout(
    file: str, keys: Iterable[str], params: Mapping[str, Any], add_prefixes: tuple[str, ...], owners: tuple[str, ...]
) -> KeyLayout:
    """Group the `keys` of `file` by how they map onto `params` (see `KeyLayout`); `owners` are
    the model prefixes reported (the longest that fits wins)."""
    groups: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    other = 0
    aliases: set[str] = set()
    keys = list(keys)
    for key in keys:
        found = _match(key, params, add_prefixes)
        if found is None:
            other += 1
            continue
        wrapper, added, name, aliased = found
        if aliased:
            aliases.add("weight_g/weight_v" if key.endswith(("weight_g", "weight_v")) else "parametrizations.weight")
        owner = max((o for o in owners if name.startswith(o)), key=len, default="")
        groups.setdefault((wrapper, added, owner), []).append((key, name))
    listed = tuple(
        KeyGroup(wrapper, added, owner, len(items), items[0][0], items[0][1])
        for (wrapper, added, owner), items in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    )
    return KeyLayout(file, len(keys), listed, other, " and ".join(sorted(aliases)))


@dataclass(frozen=True)
class LoadCheck:
    """Outcome of `check_official_load`: `error` (``""`` when the strict load passed) and the
    `layouts` of the two checkpoint files (those that could be read)."""

    error: str
    layouts: tuple[KeyLayout, ...]

    @property
    def ok(self) -> bool:
        """True when the strict load passed."""
        return not self.error


def check_official_load(directory: Path, preset: str) -> LoadCheck:
    """Load the official files in `directory` strictly into a `preset` model (``official`` or
    ``fixture_small``) and describe each checkpoint's key layout."""
    from avatarforcing.engine.checkpoint_io import CheckpointError, read_tensor_file
    from avatarforcing.engine.official.checkpoint import AUDIO_PROJECTION_PREFIX, FT_PREFIX, MAE_PREFIX, WAV2VEC2_PREFIX
    from avatarforcing.engine.official.model import AvatarForcingModel
    from avatarforcing.plugin.app.model_loading import load_model_from_source, source_from_directory

    source = source_from_directory(directory, preset, "weights verify")
    if source.kind != "official":
        raise CommandError(f"weights verify --load: {directory} does not hold the official files", exit_code=2)
    error, model = "", None
    try:
        model = load_model_from_source(source)
    except CommandError as failure:
        error = str(failure)
    if model is None:  # still describe the files: the layouts say why the keys did not fit
        model = AvatarForcingModel(source.model_config())
    params = dict(model.named_parameters())
    # The prefixes load_official_checkpoints puts in front of each file's standalone names.
    files = (
        (directory / MOTION_AUTOENCODER_FILE, (MAE_PREFIX,), (MAE_PREFIX,)),
        (
            directory / FLOW_TRANSFORMER_FILE,
            (FT_PREFIX, "audio_encoder.", WAV2VEC2_PREFIX),
            (FT_PREFIX, AUDIO_PROJECTION_PREFIX, WAV2VEC2_PREFIX),
        ),
    )
    layouts = []
    for path, add_prefixes, owners in files:
        try:
            keys = read_tensor_file(path).tensors.keys()
        except CheckpointError:
            continue  # the load error already names the file
        layouts.append(key_layout(path.name, keys, params, add_prefixes, owners))
    return LoadCheck(error, tuple(layouts))


__all__ = ["KeyGroup", "KeyLayout", "LoadCheck", "check_official_load", "key_layout"]
