"""Our own checkpoint format: a folder with one safetensors file of parameters and a config.json.

``config.json`` = {"format": NAME, "format_version": N, "model_config": ModelConfig.to_dict(),
...more keys of that format}; the safetensors file holds parameters only (no buffers) and
carries the format name and version in its metadata. Writes are atomic (a ``.partial`` file,
then a rename), loading is strict: missing, unexpected or mis-shaped parameters raise one
`CheckpointError` naming them.

Two formats use it: ``avatarforcing-flow-transformer`` (a `FlowTransformer` alone, here; what
training writes and the embedded avatar ships as) and ``avatarforcing`` (the whole official
model, `avatarforcing.engine.official.checkpoint`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avatarforcing.engine.checkpoint_io import CheckpointError, read_json_object, read_tensor_file
from avatarforcing.engine.checkpoint_matching import WeightSource, load_sources
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer

CONFIG_FILE = "config.json"
FLOW_FORMAT_NAME = "avatarforcing-flow-transformer"
FLOW_FORMAT_VERSION = 1
FLOW_WEIGHTS_FILE = "flow_transformer.safetensors"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(partial_path)``, then rename the partial file onto `path` (never half-written)."""
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def write_checkpoint(
    directory: str | os.PathLike,
    module: nn.Module,
    weights_file: str,
    config: dict[str, Any],
    config_file: str = CONFIG_FILE,
) -> Path:
    """Write `module`'s parameters (CPU copies) to ``directory/weights_file`` and `config` (which
    names its "format" and "format_version") to ``directory/config_file``. Returns the folder."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in module.named_parameters()}
    metadata = {"format": config["format"], "format_version": str(config["format_version"])}
    atomic_write(directory / weights_file, lambda p: save_file(tensors, str(p), metadata=metadata))
    atomic_write(directory / config_file, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def read_checkpoint_config(
    directory: str | os.PathLike, format_name: str, max_version: int, config_file: str = CONFIG_FILE
) -> dict[str, Any]:
    """The config file of a folder written by `write_checkpoint` in format `format_name`, checked:
    a `CheckpointError` names the file when it is missing, not JSON, of another format or newer."""
    path = Path(directory) / config_file
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not an {format_name} checkpoint folder")
    config = read_json_object(path)
    if config.get("format") != format_name:
        raise CheckpointError(f"{path}: format is {config.get('format')!r}, expected {format_name!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this version reads up to {max_version})"
        )
    return config


def model_config_of(config: dict[str, Any], directory: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` stored under "model_config" of a checkpoint folder's config."""
    try:
        return ModelConfig.from_dict(config["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{Path(directory) / CONFIG_FILE}: invalid model_config ({error})") from error


def load_parameters(
    module: nn.Module,
    weights_path: Path,
    is_buffer: Callable[[str], bool],
    *,
    strict: bool = True,
    action: str,
) -> None:
    """Copy the parameters of ``weights_path`` (written by `write_checkpoint`) into `module`,
    strictly unless asked otherwise; `is_buffer` names what the file need not hold."""
    weights = read_tensor_file(weights_path)
    spec = WeightSource(label=weights_path.name, owns=("",), requires=("",))
    load_sources(dict(module.named_parameters()), [(spec, weights)], is_buffer, strict=strict, action=action)


# -- a flow transformer alone ------------------------------------------------------------------


def save_flow_transformer(
    transformer: FlowTransformer,
    directory: str | os.PathLike,
    info: dict[str, Any] | None = None,
    *,
    weights_file: str = FLOW_WEIGHTS_FILE,
    config_file: str = CONFIG_FILE,
) -> Path:
    """Write ``directory/weights_file`` and ``directory/config_file``; returns the folder.

    `info` must be JSON-serialisable (stored verbatim under "info": motion space, training...)."""
    config = {
        "format": FLOW_FORMAT_NAME,
        "format_version": FLOW_FORMAT_VERSION,
        "model_config": transformer.cfg.to_dict(),
        "info": info or {},
    }
    return write_checkpoint(directory, transformer, weights_file, config, config_file)


def read_flow_config(
    directory: str | os.PathLike, config_file: str = CONFIG_FILE
) -> tuple[ModelConfig, dict[str, Any]]:
    """(`ModelConfig`, info) of a folder written by `save_flow_transformer`."""
    config = read_checkpoint_config(directory, FLOW_FORMAT_NAME, FLOW_FORMAT_VERSION, config_file)
    return model_config_of(config, directory), dict(config.get("info") or {})


def load_flow_transformer(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    weights_file: str = FLOW_WEIGHTS_FILE,
    config_file: str = CONFIG_FILE,
) -> tuple[FlowTransformer, dict[str, Any]]:
    """(FlowTransformer in eval mode on `device`, info) from a folder written by `save_flow_transformer`."""
    directory = Path(directory)
    cfg, info = read_flow_config(directory, config_file)
    transformer = FlowTransformer(cfg)
    buffers = {name for name, _ in transformer.named_buffers()}
    load_parameters(transformer, directory / weights_file, buffers.__contains__, action=f"load {directory}")
    return transformer.to(device).eval(), info
