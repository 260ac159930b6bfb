"""Conversion between a caller's motion units and the flow transformer's (`ModelConfig.motion_scale`).

Motion in the caller's units (the default space's normalized parameters, the official latent)
is divided by `motion_scale` per dim on its way into the model (user motion, reference motion,
training targets) and multiplied on its way out (sampled motion). Without a scale both are the
identity. Works on tensors of any shape ``[..., dim_w]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatarforcing.engine.config import ModelConfig


def _scale(cfg: ModelConfig, like: Tensor) -> Tensor | None:
    if cfg.motion_scale is None:
        return None
    return torch.tensor(cfg.motion_scale, dtype=like.dtype, device=like.device)


def to_model_units(motion: Tensor, cfg: ModelConfig) -> Tensor:
    """``[..., dim_w]`` caller units -> model units (unit spread per dim)."""
    scale = _scale(cfg, motion)
    return motion if scale is None else motion / scale


def from_model_units(motion: Tensor, cfg: ModelConfig) -> Tensor:
    """``[..., dim_w]`` model units -> caller units."""
    scale = _scale(cfg, motion)
    return motion if scale is None else motion * scale
