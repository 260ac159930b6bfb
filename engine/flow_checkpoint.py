"""Saving/loading a `FlowTransformer` alone (no motion autoencoder, no wav2vec2).

Format: a folder with `flow_transformer.safetensors` (parameters only, float32 unless saved
otherwise) and `config.json` = {"format": "avatarforcing-flow-transformer", "format_version": 1,
"model_config": ModelConfig.to_dict(), "info": {...free-form, e.g. motion space, training...}}.
Loading is strict: missing, unexpected or mis-shaped parameters raise one `CheckpointError`
naming them. This is what training writes and what models of any `ModelConfig` (e.g. the
interpretable default avatar) ship as.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from avatarforcing.engine.checkpoint_io import CheckpointError, read_tensor_file
from avatarforcing.engine.checkpoint_matching import SourceSpec, load_sources
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer

FLOW_FORMAT_NAME = "avatarforcing-flow-transformer"
FLOW_FORMAT_VERSION = 1
FLOW_WEIGHTS_FILE = "flow_transformer.safetensors"
FLOW_CONFIG_FILE = "config.json"


def _atomic_write(path: Path, write) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    os.replace(partial, path)


def save_flow_transformer(
    transformer: FlowTransformer, directory: str | os.PathLike, info: dict[str, Any] | None = None
) -> Path:
    """Write `directory/flow_transformer.safetensors` and `directory/config.json`; returns the folder.

    `info` must be JSON-serialisable (stored verbatim under "info")."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().to("cpu", copy=True).contiguous() for name, p in transformer.named_parameters()}
    metadata = {"format": FLOW_FORMAT_NAME, "format_version": str(FLOW_FORMAT_VERSION)}
    _atomic_write(directory / FLOW_WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata=metadata))
    config = {
        "format": FLOW_FORMAT_NAME,
        "format_version": FLOW_FORMAT_VERSION,
        "model_config": transformer.cfg.to_dict(),
        "info": info or {},
    }
    _atomic_write(directory / FLOW_CONFIG_FILE, lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))
    return directory


def read_flow_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """(`ModelConfig`, info) of a folder written by `save_flow_transformer`."""
    path = Path(directory) / FLOW_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a flow-transformer checkpoint folder (save_flow_transformer)")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or config.get("format") != FLOW_FORMAT_NAME:
        found = config.get("format") if isinstance(config, dict) else None
        raise CheckpointError(f"{path}: format is {found!r}, expected {FLOW_FORMAT_NAME!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FLOW_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this version reads up to {FLOW_FORMAT_VERSION})"
        )
    try:
        cfg = ModelConfig.from_dict(config["model_config"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model_config ({error})") from error
    return cfg, dict(config.get("info") or {})


def load_flow_transformer(
    directory: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[FlowTransformer, dict[str, Any]]:
    """(FlowTransformer in eval mode on `device`, info) from a folder written by `save_flow_transformer`."""
    directory = Path(directory)
    cfg, info = read_flow_config(directory)
    weights = read_tensor_file(directory / FLOW_WEIGHTS_FILE)
    transformer = FlowTransformer(cfg)
    spec = SourceSpec(label=FLOW_WEIGHTS_FILE, owns=("",), requires=("",))
    buffers = {name for name, _ in transformer.named_buffers()}
    load_sources(
        dict(transformer.named_parameters()),
        [(spec, weights)],
        buffers.__contains__,
        strict=True,
        action=f"load {directory}",
    )
    return transformer.to(device).eval(), info
