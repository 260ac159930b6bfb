"""One training evaluation of the flow transformer over a whole window (teacher forcing).

What each frame sees mirrors streaming inference (`engine.generator_step`):
- self-attention: key frame <= query frame + 2 (the spec's block-causal lookahead mask) and,
  for a frame of the block starting at s, key frame >= s - (K - M) (the streaming window:
  self cache + context + block = K frames);
- cross-attention: |key frame - query frame| <= attention_window (2);
- condition fusion (unmasked inside its window) runs per block on the frames the streaming
  step fuses: the first clip on frames [0, K), a block starting at s on [s - 2, s + M); each
  frame keeps the condition of its own block's window;
- RoPE positions are window-local frame indices; every token has its own timestep.
A single window of K frames with one timestep is exactly a `FirstClipStep` evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import AttentionContext, FlowTransformer, TokenModulation
from avatarforcing.engine.rope import rope_tables
from avatarforcing.engine.training.schedule import BlockLayout


def training_self_mask(cfg: ModelConfig, layout: BlockLayout) -> Tensor:
    """[W, W] bool, True = query (row) may attend to key (column)."""
    q = torch.arange(layout.frames)[:, None]
    k = torch.arange(layout.frames)[None, :]
    starts = torch.tensor(layout.starts)[layout.block_of_frame][:, None]
    span = cfg.clip_frames - cfg.block_frames  # self cache + context frames before a block
    return (k <= q + cfg.context_frames) & (k >= starts - span)


def training_cross_mask(cfg: ModelConfig, layout: BlockLayout) -> Tensor:
    """[W, W] bool: |key - query| <= attention_window."""
    idx = torch.arange(layout.frames)
    return (idx[None, :] - idx[:, None]).abs() <= cfg.attention_window


@dataclass
class WindowAttention:
    """Masks and RoPE tables of one layout, built once and moved to the model's device."""

    layout: BlockLayout
    self_mask: Tensor
    cross_mask: Tensor
    rope: tuple[Tensor, Tensor]

    @classmethod
    def build(cls, cfg: ModelConfig, layout: BlockLayout, device: torch.device | str = "cpu") -> WindowAttention:
        cos, sin = rope_tables(torch.arange(layout.frames), cfg.head_dim)
        return cls(
            layout,
            training_self_mask(cfg, layout).to(device),
            training_cross_mask(cfg, layout).to(device),
            (cos.to(device), sin.to(device)),
        )


def fused_conditions(
    tf: FlowTransformer, avatar_audio: Tensor, user_audio: Tensor, user_motion: Tensor, layout: BlockLayout
) -> Tensor:
    """A, U [B, W, dim_a], R [B, W, dim_w] -> c [B, W, h], fused per streaming window."""
    cfg = tf.cfg
    k, m, ctx = cfg.clip_frames, cfg.block_frames, cfg.context_frames
    parts = [tf.c_embedder(avatar_audio[:, :k], user_audio[:, :k], user_motion[:, :k])]
    blocks = layout.num_blocks - 1
    if blocks:

        def windows(x: Tensor) -> Tensor:  # [B, W, D] -> [B * blocks, C + M, D]
            w = x[:, k - ctx :].unfold(1, ctx + m, m)  # [B, blocks, D, C + M]
            return w.permute(0, 1, 3, 2).reshape(-1, ctx + m, x.shape[-1])

        c = tf.c_embedder(windows(avatar_audio), windows(user_audio), windows(user_motion))
        parts.append(c[:, ctx:].reshape(avatar_audio.shape[0], blocks * m, -1))
    return torch.cat(parts, dim=1)


def window_velocity(
    tf: FlowTransformer,
    x: Tensor,
    t_frames: Tensor,
    r_s: Tensor,
    avatar_audio: Tensor,
    user_audio: Tensor,
    user_motion: Tensor,
    attention: WindowAttention,
) -> Tensor:
    """Velocity of one conditioning branch: x [B, W, dim_w] at raw timesteps t_frames [B, W]
    (0..1000), r_s [B, dim_w], conditions as in `fused_conditions` -> v [B, W, dim_w]."""
    c = fused_conditions(tf, avatar_audio, user_audio, user_motion, attention.layout)
    cross_k, cross_v = tf.condition_keys_values(c)
    e = tf.t_embedder(t_frames)
    mod = TokenModulation(
        *tf.adaLN_modulation(e).chunk(6, dim=-1), *tf.final_layer.adaLN_modulation(e).chunk(2, dim=-1)
    )
    ctx = AttentionContext(
        None, None, cross_k, cross_v, attention.self_mask, attention.cross_mask, attention.rope, attention.rope
    )
    hidden = tf.x_embedder(torch.cat((x, r_s[:, None, :].expand_as(x)), dim=-1))
    for layer, block in enumerate(tf.blocks):
        hidden, _, _ = block(hidden, mod, ctx, layer)
    return tf.final_layer(hidden, mod)
