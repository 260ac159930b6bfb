"""Loading the official weights and saving/loading our own format (parameter names: the official checkpoints' own, one to one).

Official weights (three sources, each owning part of the parameter names):
- `motion_autoencoder.pth` -> `motion_autoencoder.*`
- `flow_transformer.pth` -> `flow_transformer.*`, `audio_encoder.audio_projection.*`
  (and, if the file carries frozen copies, `audio_encoder.wav2vec2.*`)
- a local `wav2vec2-base-960h` HuggingFace folder -> `audio_encoder.wav2vec2.*`

They are applied in the official order: wav2vec2 folder, autoencoder, flow transformer (so a
wav2vec2 copy inside `flow_transformer.pth` wins, as in the official code). Unlike the official
loader, which silently skips whatever does not match, loading is strict by default: missing,
unexpected and mis-shaped keys are collected by name and refused in one `CheckpointError`;
`strict=False` loads what matches and returns the report. `.pth` files are read with
`torch.load(weights_only=True)`: pickled code is refused, never run. Buffers are never loaded;
`model.refresh()` rebuilds what derives from the weights.

Our own format is a folder with `model.safetensors` (parameters only) and `config.json`
(`ModelConfig`, the wav2vec2 config, the format version).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from avatarforcing.engine.checkpoint_format import (
    CONFIG_FILE,
    load_parameters,
    model_config_of,
    read_checkpoint_config,
    write_checkpoint,
)
from avatarforcing.engine.checkpoint_io import CheckpointError, HFFolder, TensorFile, read_hf_folder, read_tensor_file
from avatarforcing.engine.checkpoint_matching import (
    WRAPPER_PREFIXES,
    LoadReport,
    ShapeMismatch,
    SourceReport,
    WeightSource,
    load_sources,
)
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.model import AvatarForcingModel

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "LoadReport",
    "ShapeMismatch",
    "SourceReport",
    "load_official_checkpoints",
    "load_saved_model",
    "load_wav2vec2_folder",
    "save_model",
]

FORMAT_NAME = "avatarforcing"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"

WAV2VEC2_PREFIX = "audio_encoder.wav2vec2."
AUDIO_PROJECTION_PREFIX = "audio_encoder.audio_projection."
MAE_PREFIX = "motion_autoencoder."
FT_PREFIX = "flow_transformer."

# Buffers of the official model (Appendix A): present in a file saved from its state_dict(),
# ignored on load like every buffer (blur/upsample kernels, the two masks, RoPE tables).
OFFICIAL_BUFFERS = (
    re.compile(r"^motion_autoencoder\..*\.kernel$"),
    re.compile(r"^flow_transformer\.(alignment_mask|block_bidir_causal_lookahead_mask)$"),
    re.compile(r"^flow_transformer\.blocks\.\d+\.attn\.freqs_cis$"),
)

# wav2vec2 config fields that decide the architecture (and thus what the weights mean).
WAV2VEC2_ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "hidden_act",
    "feat_extract_activation",
    "layer_norm_eps",
)


def _buffer_test(module: nn.Module, patterns=()) -> Callable[[str], bool]:
    names = {name for name, _ in module.named_buffers()}
    return lambda name: name in names or any(p.match(name) for p in patterns)


def _normalised(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def wav2vec2_config_mismatches(folder_config: dict[str, Any], model_config: transformers.Wav2Vec2Config) -> list[str]:
    """Architecture fields where a folder's `config.json` differs from the model's config."""
    model_type = folder_config.get("model_type", "wav2vec2")
    if model_type != "wav2vec2":
        return [f"model_type {model_type!r} (expected 'wav2vec2')"]
    folder = transformers.Wav2Vec2Config.from_dict(folder_config)
    problems = []
    for name in WAV2VEC2_ARCHITECTURE_FIELDS:
        theirs, ours = _normalised(getattr(folder, name, None)), _normalised(getattr(model_config, name, None))
        if theirs != ours:
            problems.append(f"{name} {theirs!r} in config.json vs {ours!r} in the model")
    return problems


def _folder_as_file(folder: HFFolder) -> TensorFile:
    return TensorFile(path=folder.path, tensors=folder.tensors)


def _wav2vec2_spec(prefix: str) -> WeightSource:
    """A HF wav2vec2 folder: CTC keys carry `wav2vec2.`, the CTC head `lm_head.*` is unused."""
    return WeightSource(
        label="wav2vec2",
        owns=(prefix,),
        requires=(prefix,),
        add_prefixes=(prefix,) if prefix else (),
        strip_prefixes=WRAPPER_PREFIXES + ("wav2vec2.",),
        ignore_prefixes=("lm_head.",),
    )


def load_official_checkpoints(
    model: AvatarForcingModel,
    *,
    flow_transformer: str | os.PathLike,
    motion_autoencoder: str | os.PathLike,
    wav2vec2_dir: str | os.PathLike | None = None,
    strict: bool = True,
) -> LoadReport:
    """Load the official `flow_transformer.pth`, `motion_autoencoder.pth` and (optionally) a local
    wav2vec2-base-960h folder into `model`, then `model.refresh()`.

    Key variants accepted per file: full AvatarForcing names (`motion_autoencoder.enc...`),
    standalone names (`enc...`; `blocks...`/`x_embedder...`, `audio_projection...`,
    `wav2vec2...`), `module.`/`_orig_mod.` wrappers, nesting under `state_dict`/`model`/..., and
    both weight-norm spellings. Without `wav2vec2_dir`, `flow_transformer.pth` must hold the
    wav2vec2 weights. strict (default): any missing/unexpected/mis-shaped key raises one
    `CheckpointError` naming them and the file, and the model is left untouched. Returns the
    `LoadReport` (loaded, missing, unexpected, mismatched per source).
    """
    try:
        model.cfg.check_official_layout()
    except ValueError as error:
        raise CheckpointError(f"cannot load the official checkpoints into this model: {error}") from error
    params = dict(model.named_parameters())
    sources: list[tuple[WeightSource, TensorFile]] = []
    config_mismatches: dict[str, list[str]] = {}
    if wav2vec2_dir is not None:
        folder = read_hf_folder(wav2vec2_dir)
        config_mismatches["wav2vec2"] = wav2vec2_config_mismatches(folder.config, model.audio_encoder.wav2vec2.config)
        sources.append((_wav2vec2_spec(WAV2VEC2_PREFIX), _folder_as_file(folder)))
    sources.append(
        (
            WeightSource(
                label="motion_autoencoder",
                owns=(MAE_PREFIX,),
                requires=(MAE_PREFIX,),
                add_prefixes=(MAE_PREFIX,),
            ),
            read_tensor_file(motion_autoencoder),
        )
    )
    ft_requires = (FT_PREFIX, AUDIO_PROJECTION_PREFIX) + (() if wav2vec2_dir is not None else (WAV2VEC2_PREFIX,))
    sources.append(
        (
            WeightSource(
                label="flow_transformer",
                owns=(FT_PREFIX, AUDIO_PROJECTION_PREFIX, WAV2VEC2_PREFIX),
                requires=ft_requires,
                add_prefixes=(FT_PREFIX, "audio_encoder.", WAV2VEC2_PREFIX),
                missing_hint=""
                if wav2vec2_dir is not None
                else "no wav2vec2_dir was given, so audio_encoder.wav2vec2.* must be in this file",
            ),
            read_tensor_file(flow_transformer),
        )
    )
    report = load_sources(
        params,
        sources,
        _buffer_test(model, OFFICIAL_BUFFERS),
        strict=strict,
        config_mismatches=config_mismatches,
        action="load the official checkpoints",
    )
    model.refresh()
    return report


def _wav2vec2_module(target: nn.Module) -> nn.Module:
    """The `Wav2Vec2Model` inside `target` (the model itself, `.wav2vec2`, `.audio_encoder.wav2vec2`)."""
    for path in ((), ("wav2vec2",), ("audio_encoder", "wav2vec2")):
        module = target
        for name in path:
            module = getattr(module, name, None)
        if isinstance(module, transformers.Wav2Vec2Model):
            return module
    raise TypeError(f"no Wav2Vec2Model found in {type(target).__name__}")


def load_wav2vec2_folder(target: nn.Module, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
    """Load a local wav2vec2 HF folder (e.g. facebook/wav2vec2-base-960h) into `target`.

    `target`: a `Wav2Vec2Model`, or a module holding one as `.wav2vec2` or
    `.audio_encoder.wav2vec2` (e.g. `AvatarForcingModel`). The folder holds `config.json` and
    `model.safetensors` or `pytorch_model.bin` (read with `weights_only=True`); its architecture
    fields must match the target's config. CTC keys (`wav2vec2.`) are mapped, `lm_head.*` is
    ignored, anything else unexpected is reported. No network access. Names in the report are
    relative to the `Wav2Vec2Model`.
    """
    module = _wav2vec2_module(target)
    folder = read_hf_folder(path)
    mismatches = {"wav2vec2": wav2vec2_config_mismatches(folder.config, module.config)}
    report = load_sources(
        dict(module.named_parameters()),
        [(_wav2vec2_spec(""), _folder_as_file(folder))],
        _buffer_test(module),
        strict=strict,
        config_mismatches=mismatches,
        action=f"load the wav2vec2 folder {path}",
    )
    if hasattr(target, "refresh"):
        target.refresh()
    return report


# -- our own format ---------------------------------------------------------------------------


def save_model(model: AvatarForcingModel, directory: str | os.PathLike) -> Path:
    """Write `directory/model.safetensors` (all parameters, no buffers) and `directory/config.json`
    (`ModelConfig.to_dict()`, the wav2vec2 config dict, format name and version). Returns the folder."""
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": model.cfg.to_dict(),
        "wav2vec2_config": json.loads(model.audio_encoder.wav2vec2.config.to_json_string(use_diff=False)),
    }
    return write_checkpoint(directory, model, MODEL_FILE, config)


def read_model_config(directory: str | os.PathLike) -> tuple[ModelConfig, transformers.Wav2Vec2Config]:
    """The `ModelConfig` and wav2vec2 config of a folder written by `save_model`."""
    config = read_checkpoint_config(directory, FORMAT_NAME, FORMAT_VERSION)
    try:
        wav2vec2_config = transformers.Wav2Vec2Config.from_dict(config["wav2vec2_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: invalid wav2vec2_config ({error})") from error
    return model_config_of(config, directory), wav2vec2_config


def load_saved_model(directory: str | os.PathLike, *, strict: bool = True) -> AvatarForcingModel:
    """Build an `AvatarForcingModel` from a folder written by `save_model` (strict by default:
    any missing/unexpected/mis-shaped parameter raises `CheckpointError` naming it)."""
    directory = Path(directory)
    model_config, wav2vec2_config = read_model_config(directory)
    model = AvatarForcingModel(model_config, wav2vec2_config)
    load_parameters(model, directory / MODEL_FILE, _buffer_test(model), strict=strict, action=f"load {directory}")
    return model.refresh()
