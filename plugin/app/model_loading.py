"""Turn ``--model SPEC`` / ``[model]`` settings into a loaded `AvatarForcingModel`.

A model spec is one of:

- ``formula:PRESET`` or ``formula:PRESET:SEED`` — every parameter set by the fixtures'
  deterministic formula (``PRESET`` is ``fixture_small`` or ``official``; ``SEED`` defaults to 0).
  Motion is meaningless, but every code path runs: for demos, tests and benchmarks.
- a directory holding the official release — ``flow_transformer.pth``,
  ``motion_autoencoder.pth`` and, optionally, a ``wav2vec2-base-960h/`` folder (without it,
  ``flow_transformer.pth`` must carry the wav2vec2 weights). The model size is
  ``[model] preset`` (``official`` unless set otherwise).
- a directory in our own format — ``model.safetensors`` + ``config.json`` (written by
  `avatarforcing.engine.official.checkpoint.save_model`); the size comes from ``config.json``.
- empty/``None``: the configured weights — ``[model] flow_transformer``/``motion_autoencoder``/
  ``wav2vec2`` when set, else the weights directory (`avatarforcing.plugin.app.weights.
  active_weights_dir`: ``[model] checkpoint_dir``, ``$AVATARFORCING_WEIGHTS``, the copy recorded
  with ``avatarforcing weights path DIR``, else the per-user cache).

Resolving a spec (`resolve_model_source`) is cheap and checks everything that can be checked
without reading weights, so a command can fail fast on a bad spec before any heavy work;
`load_model_from_source` then reads the weights (strictly: a file that does not match is refused).
Every failure is a `CommandError` with one line naming the spec or file at fault.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.app.paths import (
    FLOW_TRANSFORMER_FILE,
    MOTION_AUTOENCODER_FILE,
    WAV2VEC2_DIR,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from avatarforcing.engine.config import ModelConfig
    from avatarforcing.engine.official.model import AvatarForcingModel

FORMULA_PREFIX = "formula:"
FORMULA_PRESETS = ("fixture_small", "official")
OUR_MODEL_FILE = "model.safetensors"
OUR_CONFIG_FILE = "config.json"
DEMO_HINT = "pass --model formula:fixture_small for a demo with formula weights"
FETCH_HINT = "run `avatarforcing weights fetch` (official weights, CC BY-NC 4.0)"

SourceKind = Literal["formula", "official", "ours"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from, resolved but not loaded.

    `kind`: ``formula`` (`preset`, `seed`), ``official`` (`flow_transformer`,
    `motion_autoencoder`, optional `wav2vec2` folder; size `preset`) or ``ours`` (`directory`).
    `description` is one line for logs and progress output.
    """

    kind: SourceKind
    description: str
    preset: str = "official"
    seed: int = 0
    directory: Path | None = None
    flow_transformer: Path | None = None
    motion_autoencoder: Path | None = None
    wav2vec2: Path | None = None

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` the weights are for (reads ``config.json`` for our format)."""
        from avatarforcing.engine.config import ModelConfig

        if self.kind == "ours":
            return _read_our_config(self.directory)
        return ModelConfig.official() if self.preset == "official" else ModelConfig.fixture_small()


def _preset_config_name(preset: str, where: str) -> str:
    if preset not in FORMULA_PRESETS:
        raise CommandError(
            f"{where}: unknown model preset {preset!r} (expected {' or '.join(FORMULA_PRESETS)})",
            exit_code=2,
        )
    return preset


def _parse_formula(spec: str) -> ModelSource:
    parts = spec[len(FORMULA_PREFIX) :].split(":")
    if len(parts) > 2 or not parts[0]:
        raise CommandError(
            f"--model {spec!r}: expected formula:PRESET or formula:PRESET:SEED (PRESET: {', '.join(FORMULA_PRESETS)})",
            exit_code=2,
        )
    preset = _preset_config_name(parts[0], f"--model {spec!r}")
    seed = 0
    if len(parts) == 2:
        try:
            seed = int(parts[1])
        except ValueError:
            raise CommandError(
                f"--model {spec!r}: the seed must be an integer, got {parts[1]!r}", exit_code=2
            ) from None
        if seed < 0:
            raise CommandError(f"--model {spec!r}: the seed must be >= 0", exit_code=2)
    return ModelSource("formula", f"formula weights ({preset}, seed {seed})", preset=preset, seed=seed)


def _read_our_config(directory: Path | None) -> ModelConfig:
    from avatarforcing.engine.config import ModelConfig

    path = Path(directory or ".") / OUR_CONFIG_FILE
    try:
        data = json.loads(path.read_text())
        return ModelConfig.from_dict(data["model_config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CommandError(f"{path}: not a readable avatarforcing model config ({error})") from None


def official_files_in(directory: Path) -> tuple[Path, Path, Path | None] | None:
    """``(flow_transformer, motion_autoencoder, wav2vec2 folder or None)`` when `directory`
    holds the two official files, else ``None``."""
    flow, mae = directory / FLOW_TRANSFORMER_FILE, directory / MOTION_AUTOENCODER_FILE
    if not (flow.is_file() and mae.is_file()):
        return None
    wav2vec2 = directory / WAV2VEC2_DIR
    return flow, mae, (wav2vec2 if wav2vec2.is_dir() else None)


def source_from_directory(directory: Path, preset: str, label: str) -> ModelSource:
    """Detect the format of a weights directory; `CommandError` naming it when it holds
    neither format. `label` says where the directory came from (e.g. ``--model``)."""
    if not directory.exists():
        raise CommandError(f"{label}: {directory} does not exist", exit_code=2)
    if not directory.is_dir():
        raise CommandError(f"{label}: {directory} is not a directory", exit_code=2)
    if (directory / OUR_MODEL_FILE).is_file() and (directory / OUR_CONFIG_FILE).is_file():
        return ModelSource("ours", f"avatarforcing model {directory}", directory=directory)
    official = official_files_in(directory)
    if official is not None:
        flow, mae, wav2vec2 = official
        return ModelSource(
            "official",
            f"official weights in {directory} ({preset} size)",
            preset=_preset_config_name(preset, "model.preset"),
            directory=directory,
            flow_transformer=flow,
            motion_autoencoder=mae,
            wav2vec2=wav2vec2,
        )
    raise CommandError(
        f"{label}: {directory} holds no model weights (expected {FLOW_TRANSFORMER_FILE} + "
        f"{MOTION_AUTOENCODER_FILE} [+ {WAV2VEC2_DIR}/], or {OUR_MODEL_FILE} + {OUR_CONFIG_FILE})",
        exit_code=2,
    )


def _explicit_files(settings: Any, environ: Mapping[str, str] | None) -> ModelSource | None:
    """The ``[model] flow_transformer/motion_autoencoder/wav2vec2`` paths when any is set."""
    flow = getattr(settings, "flow_transformer", "") or ""
    mae = getattr(settings, "motion_autoencoder", "") or ""
    wav2vec2 = getattr(settings, "wav2vec2", "") or ""
    if not (flow or mae):
        return None
    from avatarforcing.plugin.app.weights import active_weights_dir

    directory = active_weights_dir(settings, environ).path
    paths = {
        "model.flow_transformer": Path(flow).expanduser() if flow else directory / FLOW_TRANSFORMER_FILE,
        "model.motion_autoencoder": Path(mae).expanduser() if mae else directory / MOTION_AUTOENCODER_FILE,
    }
    for option, path in paths.items():
        if not path.is_file():
            raise CommandError(f"{option}: {path} not found", exit_code=2)
    folder = Path(wav2vec2).expanduser() if wav2vec2 else directory / WAV2VEC2_DIR
    if wav2vec2 and not folder.is_dir():
        raise CommandError(f"model.wav2vec2: {folder} is not a directory", exit_code=2)
    preset = _preset_config_name(getattr(settings, "preset", "official"), "model.preset")
    return ModelSource(
        "official",
        f"official weights ({paths['model.flow_transformer']}, {paths['model.motion_autoencoder']})",
        preset=preset,
        flow_transformer=paths["model.flow_transformer"],
        motion_autoencoder=paths["model.motion_autoencoder"],
        wav2vec2=folder if folder.is_dir() else None,
    )


def resolve_model_source(
    spec: str | None, settings: Any = None, environ: Mapping[str, str] | None = None
) -> ModelSource:
    """Resolve a model spec (see the module docstring) against ``[model]`` `settings` (a
    `ModelSettings`, or ``None`` for defaults). Reads no weights; `CommandError` (exit 2) for a
    bad spec or missing weights, naming the spec or directory."""
    preset = getattr(settings, "preset", "official")
    if spec:
        if spec.startswith(FORMULA_PREFIX):
            return _parse_formula(spec)
        return source_from_directory(Path(spec).expanduser(), preset, f"--model {spec}")
    explicit = _explicit_files(settings, environ)
    if explicit is not None:
        return explicit
    from avatarforcing.plugin.app.weights import active_weights_dir

    active = active_weights_dir(settings, environ)
    directory = active.path
    if directory.is_dir() and ((directory / OUR_MODEL_FILE).is_file() or official_files_in(directory) is not None):
        return source_from_directory(directory, preset, f"weights directory ({active.origin})")
    raise CommandError(
        f"no model weights in {directory} ({active.origin}): {FETCH_HINT}, "
        f"point `avatarforcing weights path DIR` at a copy, or {DEMO_HINT}",
        exit_code=2,
    )


def pick_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``mps`` when available, else ``cpu``;
    anything else is returned unchanged (validated by the config)."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _checkpoint_failure(source: ModelSource, error: Exception) -> CommandError:
    """One line from a (possibly long, multi-line) `CheckpointError`."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    report = getattr(error, "report", None)
    detail = lines[0] if lines else type(error).__name__
    if report is not None:
        counts = (
            f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, {len(report.mismatched)} mis-shaped"
        )
        example = (report.missing or report.unexpected or [str(m) for m in report.mismatched] or [""])[0]
        detail = f"{detail} ({counts}{'; e.g. ' + example if example else ''}; --debug shows the full report)"
    return CommandError(f"cannot load {source.description}: {detail}")


def load_model_from_source(source: ModelSource, device: str = "cpu") -> AvatarForcingModel:
    """Build the model and read its weights (strict), on `device`, in eval mode.

    Raises `CommandError` (exit 1) with one line when a weight file is unreadable, unsafe (a
    pickle with code) or does not match the model.
    """
    from avatarforcing.engine.official.checkpoint import CheckpointError, load_official_checkpoints, load_saved_model
    from avatarforcing.engine.official.model import AvatarForcingModel

    try:
        if source.kind == "formula":
            model = AvatarForcingModel.with_formula_weights(source.model_config(), source.seed)
        elif source.kind == "ours":
            model = load_saved_model(source.directory)
        else:
            model = AvatarForcingModel(source.model_config())
            load_official_checkpoints(
                model,
                flow_transformer=source.flow_transformer,
                motion_autoencoder=source.motion_autoencoder,
                wav2vec2_dir=source.wav2vec2,
            )
    except CheckpointError as error:
        raise _checkpoint_failure(source, error) from error
    except OSError as error:
        raise CommandError(f"cannot load {source.description}: {error}") from error
    return model.to(device).eval()


def load_model_from_spec(
    spec: str | None,
    settings: Any = None,
    *,
    environ: Mapping[str, str] | None = None,
    device: str | None = None,
) -> tuple[AvatarForcingModel, ModelSource]:
    """`resolve_model_source` then `load_model_from_source` on `device` (default: ``[model] device``,
    ``auto`` picking CUDA when usable). Returns ``(model, source)``."""
    source = resolve_model_source(spec, settings, environ)
    chosen = device or pick_device(getattr(settings, "device", "auto"))
    return load_model_from_source(source, chosen), source


__all__ = [
    "FORMULA_PRESETS",
    "ModelSource",
    "load_model_from_source",
    "load_model_from_spec",
    "official_files_in",
    "pick_device",
    "resolve_model_source",
    "source_from_directory",
]
