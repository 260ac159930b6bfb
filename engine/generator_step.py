"""Fixed-shape generator steps with explicit state in and out.

`FirstClipStep` samples the 50-frame first clip and fills the caches; `BlockStep` samples one
10-frame block from 2 context frames and the caches and returns the updated caches. Both are
plain `nn.Module`s whose tensors have the same shapes at every call, so they can be exported
(ONNX/TensorRT) with the state going around the loop.

Cache layout (unrotated keys): self_k/self_v [depth, 3B, H, K-M-2 (38), d], cross_k/cross_v
[depth, 3B, H, 2, d]. Official numbers in parentheses (K = 50, M = 10); widths: motion dim_w
(512), audio features dim_a (512). RoPE uses window-local positions (first clip 0..49; a block's keys
0..49 = frames t-40..t+9, its queries 38..49); `set_rope_origin` shifts them for tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avatarforcing.engine.attention import (
    block_cross_mask,
    block_self_mask,
    first_clip_cross_mask,
    first_clip_self_mask,
)
from avatarforcing.engine.flow_transformer import AttentionContext, FlowTransformer
from avatarforcing.engine.rope import rope_tables
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, combine_guidance


class _StepBase(nn.Module):
    def __init__(self, transformer: FlowTransformer, sampler: FlowMatchingEulerSampler) -> None:
        super().__init__()
        self.transformer = transformer
        self.sampler = sampler
        cfg = transformer.cfg
        self.cfg = cfg
        # t values: index 0 is t = 0 (context tokens, write passes), 1.. the evaluation timesteps
        t_values = torch.tensor((0.0, *sampler.evaluation_timesteps), dtype=torch.float32)
        self.register_buffer("t_values", t_values, persistent=False)
        self.recorder: list[tuple[Tensor, Tensor]] | None = None  # (v3, x) per evaluation, for tests

    def _record(self, v3: Tensor, x: Tensor) -> None:
        if self.recorder is not None:
            self.recorder.append((v3.detach().clone(), x.detach().clone()))

    def _set_tables(self, q_positions: Tensor, k_positions: Tensor) -> None:
        d = self.cfg.head_dim
        for name, positions in (("rope_q", q_positions), ("rope_k", k_positions)):
            cos, sin = rope_tables(positions, d)
            self.register_buffer(f"{name}_cos", cos, persistent=False)
            self.register_buffer(f"{name}_sin", sin, persistent=False)


class FirstClipStep(_StepBase):
    """Sample frames 0..K-1 and produce the caches for the first streaming block."""

    def __init__(self, transformer: FlowTransformer, sampler: FlowMatchingEulerSampler) -> None:
        super().__init__(transformer, sampler)
        k = self.cfg.clip_frames
        self.register_buffer("self_mask", first_clip_self_mask(k), persistent=False)
        self.register_buffer("cross_mask", first_clip_cross_mask(k, self.cfg.attention_window), persistent=False)
        self.set_rope_origin(0)

    def set_rope_origin(self, origin: int) -> None:
        positions = torch.arange(self.cfg.clip_frames) + origin
        self._set_tables(positions, positions)

    def forward(
        self,
        noise: Tensor,
        avatar_audio: Tensor,
        user_audio: Tensor,
        user_motion: Tensor,
        r_s: Tensor,
        guidance: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """noise [B,K,512], A/U/R [B,K,512], r_s [B,512], guidance [2] ->
        (latents [B,K,512], self_k, self_v [depth,3B,H,38,d], cross_k, cross_v [depth,3B,H,2,d])."""
        tf, cfg = self.transformer, self.cfg
        k = cfg.clip_frames
        c = tf.guidance_conditions(avatar_audio, user_audio, user_motion)
        cross_k, cross_v = tf.condition_keys_values(c)
        ctx = AttentionContext(
            None,
            None,
            cross_k,
            cross_v,
            self.self_mask,
            self.cross_mask,
            (self.rope_q_cos, self.rope_q_sin),
            (self.rope_k_cos, self.rope_k_sin),
        )
        x = noise
        all_tokens = torch.zeros(k, dtype=torch.long, device=noise.device)
        for i in range(len(self.sampler.evaluation_timesteps)):
            mod = tf.token_modulation(self.t_values, all_tokens + (i + 1))
            v3 = tf.velocity(x, r_s, mod, ctx)
            x = self.sampler.step(x, combine_guidance(v3, guidance), i)
            self._record(v3, x)
        keys, values = tf.collect_keys_values(x, r_s, tf.token_modulation(self.t_values, all_tokens), ctx)
        first, last = cfg.block_frames, k - cfg.context_frames  # tokens 10..47
        self_k = torch.stack([kk[:, :, first:last] for kk in keys])
        self_v = torch.stack([vv[:, :, first:last] for vv in values])
        cross_first = k - cfg.context_frames - cfg.cross_cache_len  # condition tokens 46, 47
        cross_k_cache = torch.stack([kk[:, :, cross_first:last] for kk in cross_k])
        cross_v_cache = torch.stack([vv[:, :, cross_first:last] for vv in cross_v])
        return x, self_k, self_v, cross_k_cache, cross_v_cache


class BlockStep(_StepBase):
    """Sample one block of M new frames after the C context frames, updating the caches."""

    def __init__(self, transformer: FlowTransformer, sampler: FlowMatchingEulerSampler) -> None:
        super().__init__(transformer, sampler)
        cfg = self.cfg
        n, cached = cfg.window_frames, cfg.self_cache_len
        self.register_buffer("self_mask", block_self_mask(cached, n), persistent=False)
        self.register_buffer(
            "cross_mask", block_cross_mask(cfg.cross_cache_len, n, cfg.attention_window), persistent=False
        )
        token_time = torch.ones(n, dtype=torch.long)
        token_time[: cfg.context_frames] = 0
        self.register_buffer("noisy_tokens", token_time, persistent=False)
        self.set_rope_origin(0)

    def set_rope_origin(self, origin: int) -> None:
        """Key positions origin..origin+49, query positions origin+38..origin+49."""
        cfg = self.cfg
        keys = torch.arange(cfg.self_cache_len + cfg.window_frames) + origin
        self._set_tables(keys[cfg.self_cache_len :], keys)

    def forward(
        self,
        noise: Tensor,
        context: Tensor,
        avatar_audio: Tensor,
        user_audio: Tensor,
        user_motion: Tensor,
        r_s: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        guidance: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """noise [B,M,512], context [B,C,512], A/U/R [B,C+M,512] (frames t-2..t+9), r_s [B,512],
        caches as in the module docstring, guidance [2] ->
        (new latents [B,M,512], self_k', self_v', cross_k', cross_v')."""
        tf, cfg = self.transformer, self.cfg
        c = tf.guidance_conditions(avatar_audio, user_audio, user_motion)
        window_k, window_v = tf.condition_keys_values(c)
        cross_keys = [torch.cat((cross_k[i], kk), dim=2) for i, kk in enumerate(window_k)]
        cross_values = [torch.cat((cross_v[i], vv), dim=2) for i, vv in enumerate(window_v)]
        ctx = AttentionContext(
            list(self_k.unbind(0)),
            list(self_v.unbind(0)),
            cross_keys,
            cross_values,
            self.self_mask,
            self.cross_mask,
            (self.rope_q_cos, self.rope_q_sin),
            (self.rope_k_cos, self.rope_k_sin),
        )
        ctx_frames = cfg.context_frames
        x = torch.cat((context, noise), dim=1)
        for i in range(len(self.sampler.evaluation_timesteps)):
            mod = tf.token_modulation(self.t_values, self.noisy_tokens * (i + 1))
            v3 = tf.velocity(x, r_s, mod, ctx)
            new = self.sampler.step(x[:, ctx_frames:], combine_guidance(v3, guidance)[:, ctx_frames:], i)
            x = torch.cat((context, new), dim=1)
            self._record(v3, x)
        keys, values = tf.collect_keys_values(x, r_s, tf.token_modulation(self.t_values, self.noisy_tokens * 0), ctx)
        # self cache: append window tokens 0..M-1 (frames t-2..t+M-3), keep the newest entries
        # (officially: drop the oldest 10, append tokens 0..9)
        shift, cached = cfg.block_frames, cfg.self_cache_len
        new_self_k = torch.cat((self_k, torch.stack([kk[:, :, :shift] for kk in keys])), dim=3)[:, :, :, -cached:]
        new_self_v = torch.cat((self_v, torch.stack([vv[:, :, :shift] for vv in values])), dim=3)[:, :, :, -cached:]
        # cross cache: the 2 condition frames before the next block's context (officially window
        # tokens 8, 9); taken from [cache, window] so that blocks of 1 frame work too
        last = cfg.cross_cache_len + cfg.window_frames - cfg.context_frames
        first = last - cfg.cross_cache_len
        new_cross_k = torch.stack([kk[:, :, first:last] for kk in cross_keys])
        new_cross_v = torch.stack([vv[:, :, first:last] for vv in cross_values])
        return x[:, ctx_frames:], new_self_k, new_self_v, new_cross_k, new_cross_v
