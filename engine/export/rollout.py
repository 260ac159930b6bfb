"""Backend-neutral graph runners and the multi-block generator rollout over them.

A *graph runner* is any callable `feeds: {input name: Tensor} -> {output name: Tensor}` for one
graph of `graph_specs` (PyTorch eager, ONNX Runtime, TensorRT, CUDA graphs). `rollout_latents`
drives a first-clip runner and a block-step runner the way `MotionStream` does for fully
pushed, equal-length condition streams: the caches and context latents go around the loop, so
comparing its output with `stream.generate` checks a backend over many blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.export.graph_specs import CACHE_NAMES, GraphSpec


class GraphRunner(Protocol):
    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]: ...


class EagerRunner:
    """PyTorch eager execution of a `GraphSpec`'s module."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return self.spec.run_eager(feeds)


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of one graph, in the order of its positional call (what a
    `GraphSpec` says without the module and example inputs, e.g. read from the manifest)."""

    input_names: tuple[str, ...]
    output_names: tuple[str, ...]


class PositionalStep:
    """Adapts a graph runner to the positional call of `FirstClipStep` / `BlockStep`, so a
    `MotionStream` runs on any backend: `stream.block = PositionalStep(runner, spec)`.

    Returns the outputs as a tuple in the spec's order. Window-local RoPE only (the stream's
    default `rope_offset=None`): the exported tables are constants of the graph.
    """

    def __init__(self, runner: GraphRunner, spec: GraphSpec | GraphIO) -> None:
        self.runner = runner
        self.input_names = spec.input_names
        self.output_names = spec.output_names

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}"
            )
        out = self.runner(dict(zip(self.input_names, inputs)))
        return tuple(out[n] for n in self.output_names)

    def set_rope_origin(self, origin: int) -> None:
        raise RuntimeError(
            "exported generator graphs use window-local RoPE; create the MotionStream with rope_offset=None"
        )


def rollout_frames(cfg: ModelConfig, blocks: int) -> int:
    """Frames covered by the first clip plus `blocks` streaming blocks (50 + 10 * blocks)."""
    return cfg.clip_frames + blocks * cfg.block_frames


def rollout_noise(cfg: ModelConfig, blocks: int, batch: int = 1, seed: int = 0) -> list[Tensor]:
    """The noise tensors a rollout consumes, in order: [B,50,512], then `blocks` x [B,10,512]."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [cfg.clip_frames] + [cfg.block_frames] * blocks
    return [torch.randn(batch, n, cfg.dim_w, generator=gen) for n in shapes]


def rollout_latents(
    cfg: ModelConfig,
    first_clip: GraphRunner,
    block_step: GraphRunner,
    conditions: Sequence[Tensor],
    r_s: Tensor,
    guidance: Tensor,
    noise: Sequence[Tensor],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run the first clip and then one block per remaining 10 frames.

    conditions: avatar audio, user audio, user motion, each [B, T, 512] with
    T = 50 + 10 * blocks; noise as from `rollout_noise`. Returns (latents [B, T, 512], final
    caches by name). Windows are the same as `MotionStream`'s: block t sees frames t-2..t+9.
    """
    total = conditions[0].shape[1]
    k, m, c = cfg.clip_frames, cfg.block_frames, cfg.context_frames
    if (total - k) % m or total < k or any(x.shape[1] != total for x in conditions):
        raise ValueError(f"conditions must share T = {k} + {m} * blocks frames, got {[x.shape[1] for x in conditions]}")
    if len(noise) != 1 + (total - k) // m:
        raise ValueError(f"need {1 + (total - k) // m} noise tensors, got {len(noise)}")
    names = ("avatar_audio", "user_audio", "user_motion")
    clip = {n: x[:, :k] for n, x in zip(names, conditions)}
    out = first_clip({"noise": noise[0], **clip, "r_s": r_s, "guidance": guidance})
    latents = [out["latents"]]
    caches = {n: out[f"{n}_out"] for n in CACHE_NAMES}
    context = out["latents"][:, -c:]
    for index, start in enumerate(range(k, total, m), start=1):
        windows = {n: x[:, start - c : start + m] for n, x in zip(names, conditions)}
        out = block_step(
            {"noise": noise[index], "context": context, **windows, "r_s": r_s, **caches, "guidance": guidance}
        )
        latents.append(out["latents"])
        caches = {n: out[f"{n}_out"] for n in CACHE_NAMES}
        context = out["latents"][:, -c:]
    return torch.cat(latents, dim=1), caches


__all__ = [
    "EagerRunner",
    "GraphIO",
    "GraphRunner",
    "PositionalStep",
    "rollout_frames",
    "rollout_latents",
    "rollout_noise",
]
