"""Attention layers of the flow transformer and its condition fusion, plus the official masks.

All masks are boolean with True = may attend. Heads are laid out as in the official code:
head j uses feature columns j*d .. (j+1)*d - 1 of each projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatarforcing.engine.rope import apply_rope


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, L, H*d] -> [B, H, L, d]."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, d] -> [B, L, H*d]."""
    return x.transpose(1, 2).flatten(2)


class PackedMultiheadAttention(nn.Module):
    """Textbook multi-head attention with `nn.MultiheadAttention`'s parameter names.

    `in_proj_weight [3E, E]` rows are q, k, v; `out_proj` is Linear(E, E). No mask, no dropout
    (the condition fusion attends across its whole window).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        """query [B, Lq, E], key_value [B, Lk, E] -> [B, Lq, E]."""
        w_q, w_kv = self.in_proj_weight.split((query.shape[-1], 2 * query.shape[-1]))
        b_q, b_kv = self.in_proj_bias.split((query.shape[-1], 2 * query.shape[-1]))
        q = split_heads(F.linear(query, w_q, b_q), self.num_heads)
        k, v = F.linear(key_value, w_kv, b_kv).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, split_heads(k, self.num_heads), split_heads(v, self.num_heads))
        return self.out_proj(merge_heads(out))


class SelfAttention(nn.Module):
    """RoPE self-attention over [cached keys/values, new tokens] (`attn` of a block)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [B, L, h] -> q, k, v [B, H, L, d], k not yet rotated."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return split_heads(q, self.num_heads), split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor,
        rope_q: tuple[Tensor, Tensor],
        rope_k: tuple[Tensor, Tensor],
    ) -> Tensor:
        """Unrotated q [B,H,Lq,d], k/v [B,H,Lk,d], mask [Lq,Lk] -> [B, Lq, h]."""
        q = apply_rope(q, *rope_q)
        k = apply_rope(k, *rope_k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(merge_heads(out))


class CrossAttention(nn.Module):
    """Cross-attention of latent tokens onto condition tokens (`cross_attn` of a block)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def condition_keys_values(self, c: Tensor) -> tuple[Tensor, Tensor]:
        """Condition c [B, Lc, h] -> k, v [B, H, Lc, d]; constant per window, compute once."""
        k, v = self.kv(c).chunk(2, dim=-1)
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, h] attends to k/v [B, H, Lc, d] under mask [L, Lc] -> [B, L, h]."""
        q = split_heads(self.q(x), self.num_heads)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


def first_clip_self_mask(frames: int, lookahead: int = 2) -> Tensor:
    """[K, K]: key <= query + lookahead (the official block mask simplifies to this)."""
    idx = torch.arange(frames)
    return idx[None, :] <= idx[:, None] + lookahead


def first_clip_cross_mask(frames: int, window: int = 2) -> Tensor:
    """[K, K]: |key - query| <= window."""
    idx = torch.arange(frames)
    return (idx[None, :] - idx[:, None]).abs() <= window


def block_self_mask(cached: int, tokens: int, lookahead: int = 2) -> Tensor:
    """[L, cached + L]: query j (frame cached + j of the key axis) sees key k iff k <= cached + j + lookahead."""
    query = torch.arange(tokens)[:, None] + cached
    key = torch.arange(cached + tokens)[None, :]
    return key <= query + lookahead


def block_cross_mask(cached: int, tokens: int, window: int = 2) -> Tensor:
    """[L, cached + L]: query j (condition index cached + j) sees key k iff |k - (cached + j)| <= window."""
    query = torch.arange(tokens)[:, None] + cached
    key = torch.arange(cached + tokens)[None, :]
    return (key - query).abs() <= window
