"""The flow transformer: velocity of motion latents given conditions and time.

One network evaluation works on a window of L latent tokens for the three classifier-free
guidance branches stacked on the batch axis (order [null, avatar audio, user]). Self-attention
keys/values are cached *unrotated*; RoPE is applied at read time with window-local positions,
which is exact up to float rounding (attention with RoPE depends only on relative positions)
and lets a session run for any length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarforcing.engine.attention import CrossAttention, PackedMultiheadAttention, SelfAttention
from avatarforcing.engine.config import ModelConfig

CFG_BRANCHES = 3


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """Raw timestep t (0..1000) -> [..., h]: 256-d sinusoid (cos first), Linear, SiLU, Linear."""

    frequency_size = 256

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(self.frequency_size, dim), nn.SiLU(), nn.Linear(dim, dim))
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[..., None] * self.freqs
        return self.mlp(torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1))


class PatchEmbedder(nn.Module):
    """concat(x, r_s) [.., 1024] -> [.., h] (official name `x_embedder.proj`)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class ConditionFusion(nn.Module):
    """`c_embedder`: fuse avatar audio A, user audio U and user motion R into c.

    User motion queries user audio; avatar audio then queries the fused user stream.
    Bidirectional over the whole window (no mask).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        width = cfg.dim_a
        self.motion_embedder = nn.Sequential(
            nn.Linear(cfg.dim_w, width),
            nn.LayerNorm(width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.SiLU(),
        )
        self.dual_modal_attn = PackedMultiheadAttention(width, cfg.fusion_heads)
        self.ln1 = nn.LayerNorm(width)
        self.user_agent_attn = PackedMultiheadAttention(width, cfg.fusion_heads)
        self.ln2 = nn.LayerNorm(width)
        self.to_cond_user = nn.Linear(width, cfg.dim_h)

    def forward(self, avatar_audio: Tensor, user_audio: Tensor, user_motion: Tensor) -> Tensor:
        """A, U [B, L, dim_a], R [B, L, dim_w] -> c [B, L, h]."""
        m = self.motion_embedder(user_motion)
        fused_user = F.silu(self.ln1(m + self.dual_modal_attn(m, user_audio)))
        u = F.silu(self.ln2(avatar_audio + self.user_agent_attn(avatar_audio, fused_user)))
        return self.to_cond_user(u)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


@dataclass
class TokenModulation:
    """Per-token adaLN vectors, each [L, h] (shared by all blocks)."""

    shift_msa: Tensor
    scale_msa: Tensor
    gate_msa: Tensor
    shift_mlp: Tensor
    scale_mlp: Tensor
    gate_mlp: Tensor
    shift_final: Tensor
    scale_final: Tensor


@dataclass
class AttentionContext:
    """What one evaluation of the blocks attends to besides its own tokens.

    self_cache_k/v: per layer [3B, H, Ls, d] unrotated (Ls may be 0).
    cross_k/v: per layer [3B, H, Lc, d] condition keys/values (cached + this window's).
    rope_q / rope_k: (cos, sin) tables [L, d/2] and [Ls + L, d/2].
    """

    self_cache_k: list[Tensor] | None
    self_cache_v: list[Tensor] | None
    cross_k: list[Tensor]
    cross_v: list[Tensor]
    self_mask: Tensor
    cross_mask: Tensor
    rope_q: tuple[Tensor, Tensor]
    rope_k: tuple[Tensor, Tensor]


class FlowBlock(nn.Module):
    """DFoT block: modulated RoPE self-attention, cross-attention, modulated MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.dim_h
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(h, cfg.num_heads)
        self.norm3 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(h, cfg.num_heads)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(h, int(h * cfg.mlp_ratio))

    def new_keys_values(self, x: Tensor, mod: TokenModulation) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v [3B, H, L, d] of this block's own tokens (k unrotated)."""
        return self.attn.keys_values(modulate(self.norm1(x), mod.shift_msa, mod.scale_msa))

    def forward(
        self,
        x: Tensor,
        mod: TokenModulation,
        ctx: AttentionContext,
        layer: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x [3B, L, h] -> (x', k_new, v_new) with this layer's unrotated new keys/values."""
        q, k_new, v_new = self.new_keys_values(x, mod)
        k, v = k_new, v_new
        if ctx.self_cache_k is not None:
            k = torch.cat((ctx.self_cache_k[layer], k_new), dim=2)
            v = torch.cat((ctx.self_cache_v[layer], v_new), dim=2)
        x = x + mod.gate_msa * self.attn.attend(q, k, v, ctx.self_mask, ctx.rope_q, ctx.rope_k)
        x = x + self.cross_attn(self.norm3(x), ctx.cross_k[layer], ctx.cross_v[layer], ctx.cross_mask)
        x = x + mod.gate_mlp * self.mlp(modulate(self.norm2(x), mod.shift_mlp, mod.scale_mlp))
        return x, k_new, v_new


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim_h, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(cfg.dim_h, cfg.dim_w)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim_h, 2 * cfg.dim_h))

    def forward(self, x: Tensor, mod: TokenModulation) -> Tensor:
        return self.linear(modulate(self.norm_final(x), mod.shift_final, mod.scale_final))


class FlowTransformer(nn.Module):
    """Velocity network v(x, t | r_s, c). Parameter names follow the official checkpoint."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.dim_h
        self.x_embedder = PatchEmbedder(2 * cfg.dim_w, h)
        self.t_embedder = TimestepEmbedder(h)
        self.c_embedder = ConditionFusion(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))
        self.blocks = nn.ModuleList(FlowBlock(cfg) for _ in range(cfg.transformer_depth))
        self.final_layer = FinalLayer(cfg)

    # -- pieces that are constant per window ----------------------------------------------------
    def guidance_conditions(self, avatar_audio: Tensor, user_audio: Tensor, user_motion: Tensor) -> Tensor:
        """Fused condition of the CFG batch [null, avatar audio, user]: A, U [B, L, dim_a],
        R [B, L, dim_w] -> c [3B, L, h]. The null condition is zeros."""
        a_zero, u_zero, r_zero = (torch.zeros_like(x) for x in (avatar_audio, user_audio, user_motion))
        a3 = torch.cat((a_zero, avatar_audio, a_zero))
        u3 = torch.cat((u_zero, u_zero, user_audio))
        r3 = torch.cat((r_zero, r_zero, user_motion))
        return self.c_embedder(a3, u3, r3)

    def condition_keys_values(self, c: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per-layer cross-attention keys/values of c [3B, Lc, h] -> lists of [3B, H, Lc, d]."""
        pairs = [block.cross_attn.condition_keys_values(c) for block in self.blocks]
        return [k for k, _ in pairs], [v for _, v in pairs]

    def token_modulation(self, t_values: Tensor, token_index: Tensor) -> TokenModulation:
        """adaLN vectors for tokens whose time is t_values[token_index[j]] -> each [L, h]."""
        e = self.t_embedder(t_values)
        shared = self.adaLN_modulation(e)[token_index].chunk(6, dim=-1)
        final = self.final_layer.adaLN_modulation(e)[token_index].chunk(2, dim=-1)
        return TokenModulation(*shared, *final)

    def embed(self, x: Tensor, r_s: Tensor) -> Tensor:
        """x [B, L, 512], r_s [B, 512] -> [3B, L, h] (identical for the three branches)."""
        tokens = self.x_embedder(torch.cat((x, r_s[:, None, :].expand_as(x)), dim=-1))
        return tokens.repeat(CFG_BRANCHES, 1, 1)

    # -- evaluations ------------------------------------------------------------------------------
    def velocity(self, x: Tensor, r_s: Tensor, mod: TokenModulation, ctx: AttentionContext) -> Tensor:
        """Raw velocities of the three branches: x [B, L, 512] -> [3B, L, 512]."""
        hidden = self.embed(x, r_s)
        for layer, block in enumerate(self.blocks):
            hidden, _, _ = block(hidden, mod, ctx, layer)
        return self.final_layer(hidden, mod)

    def collect_keys_values(
        self, x: Tensor, r_s: Tensor, mod: TokenModulation, ctx: AttentionContext
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Cache-write pass: per-layer unrotated self-attention k, v [3B, H, L, d] of x's tokens.

        Stops after the last layer's projection: nothing after it can change the cache.
        """
        hidden = self.embed(x, r_s)
        keys, values = [], []
        last = len(self.blocks) - 1
        for layer, block in enumerate(self.blocks):
            if layer == last:
                _, k_new, v_new = block.new_keys_values(hidden, mod)
            else:
                hidden, k_new, v_new = block(hidden, mod, ctx, layer)
            keys.append(k_new)
            values.append(v_new)
        return keys, values
