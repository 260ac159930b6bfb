"""Rotary position embedding with real arithmetic (no complex tensors; ONNX/TensorRT friendly).

Pairing is interleaved: dims (2i, 2i+1) rotate by angle p * theta_i with
theta_i = 10000^(-2i/d).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_frequencies(head_dim: int) -> Tensor:
    """theta_i = 10000^(-2i/d), i = 0..d/2-1, float32 [d/2]."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32)[: head_dim // 2] / head_dim
    return 1.0 / (10000.0**exponents)


def rope_tables(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos, sin tables [P, d/2] (float32) for integer-valued `positions` [P].

    Angles are formed in float32 like the official table for positions that float32 holds
    exactly; large positions are reduced modulo 2*pi in float64 first so that the angle keeps
    its precision at any session length.
    """
    freqs = rope_frequencies(head_dim)
    if positions.abs().max().item() < 4096:
        angles = torch.outer(positions.to(torch.float32), freqs)
    else:
        angles64 = torch.outer(positions.to(torch.float64), freqs.to(torch.float64))
        angles = torch.remainder(angles64, 2 * torch.pi).to(torch.float32)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of `x` [..., P, d] by tables [P, d/2]; computed in float32."""
    dtype = x.dtype
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(dtype)
