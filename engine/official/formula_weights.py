"""Deterministic "formula" weights of the reference fixtures (fixture README, "Weights").

Every parameter value is a splitmix64 hash of its flat index, keyed by the seed and the CRC-32 of
the parameter's canonical (official) name, mapped to a uniform distribution with a per-rule mean
and standard deviation. No weight file is needed: tests and benchmarks build any model size.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

# torch's weight-norm parametrisation names -> the checkpoint-style names that are hashed
_CANONICAL_SUFFIXES = {
    "parametrizations.weight.original0": "weight_g",
    "parametrizations.weight.original1": "weight_v",
}


def canonical_name(name: str) -> str:
    """Map torch parametrisation names onto the official checkpoint names."""
    for suffix, replacement in _CANONICAL_SUFFIXES.items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + replacement
    return name


def init_rule(name: str, shape: tuple[int, ...]) -> tuple[str, float, float]:
    """(rule, center, scale) for a canonical parameter name; first matching rule wins."""
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("pos_conv_embed.conv.weight_g"):
        return "weight_g", 2.0, 0.1
    if name.endswith("pos_conv_embed.conv.weight_v"):
        return "weight_v", 0.0, 1.0
    if name.endswith("conv.modulation.bias"):
        return "modulation_bias", 1.0, 0.1
    if leaf == "bias" or leaf.endswith("_bias"):
        return "bias", 0.0, 0.1
    if leaf == "weight" and len(shape) == 1:
        return "norm_gain", 1.0, 0.1
    if name.startswith("motion_autoencoder."):
        return "equalized_unit", 0.0, 1.0
    if name.endswith("masked_spec_embed"):
        return "unit", 0.0, 1.0
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return "fan_in", 0.0, 1.0 / math.sqrt(fan_in)


def splitmix_uniform(key: int, count: int) -> np.ndarray:
    """u_i in [0, 1) (float64) for flat indices i = 0..count-1 under a 64-bit key."""
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def fixture_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Formula values (float32, `shape`) of the canonical parameter `name`."""
    _, center, scale = init_rule(name, shape)
    key = ((seed << 32) | zlib.crc32(name.encode("utf-8"))) & 0xFFFFFFFFFFFFFFFF
    r = 2.0 * splitmix_uniform(key, math.prod(shape)) - 1.0
    return (center + scale * math.sqrt(3.0) * r).astype(np.float32).reshape(shape)


def iter_canonical_parameters(module: nn.Module, prefix: str = "") -> Iterable[tuple[str, nn.Parameter]]:
    """(canonical official name, parameter) for every parameter of `module`."""
    for name, param in module.named_parameters():
        yield canonical_name(prefix + name), param


@torch.no_grad()
def apply_formula_weights(module: nn.Module, seed: int, prefix: str = "") -> int:
    """Overwrite every parameter of `module` with formula values; returns the count.

    `prefix` is prepended to the module's own names to form the official attribute path
    (e.g. "flow_transformer." for the transformer on its own).
    """
    count = 0
    for name, param in iter_canonical_parameters(module, prefix):
        values = fixture_values(name, tuple(param.shape), seed)
        param.copy_(torch.from_numpy(values))
        count += 1
    return count
