"""Losers for preference optimisation: the frozen reference model's own motion for an item,
sampled with the streaming generator while the user's conditions (user audio and user motion)
are the null condition (zeros) — the avatar hears itself only, so it cannot react.

With the user streams null, the CFG "user" branch equals the null branch, so the sample is the
reference model's avatar-audio-only motion with the usual avatar guidance. Losers are generated
once per item (the reference is frozen; the trainer caches them, see `docs/training.md`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream


def null_user_conditions(user_audio: Tensor, user_motion: Tensor) -> tuple[Tensor, Tensor]:
    """The null condition for the user side: zeros of the same shapes."""
    return torch.zeros_like(user_audio), torch.zeros_like(user_motion)


@torch.no_grad()
def sample_motion(
    reference: FlowTransformer,
    avatar_audio: Tensor,
    user_audio: Tensor,
    user_motion: Tensor,
    r_s: Tensor,
    nfe: int = 10,
    guidance: GuidanceScales | Callable[[int], GuidanceScales] = GuidanceScales(),  # noqa: B008 - frozen dataclass
    seed: int = 0,
) -> Tensor:
    """Streamed sample of one item: A, U [T, dim_a], R [T, dim_w], r_s [dim_w] -> motion [T, dim_w].
    `guidance`: fixed scales, or scales per block from the frame the block ends before (e.g.
    `engine.guidance_schedule.VoicedGuidance`), set before each block as a live session does."""
    device = next(reference.parameters()).device
    scales_for = (lambda stop: guidance) if isinstance(guidance, GuidanceScales) else guidance
    stream = MotionStream(reference, r_s[None].to(device), FlowMatchingEulerSampler(nfe), seed=seed)
    stream.push(avatar_audio[None].to(device), user_audio[None].to(device), user_motion[None].to(device))
    stream.end()
    blocks = []
    while True:
        stream.set_guidance(scales_for(stream.next_stop))
        if (block := stream.next_block()) is None:
            break
        blocks.append(block.latents)
    return torch.cat(blocks, dim=1)[0].cpu()


def make_loser(
    reference: FlowTransformer,
    avatar_audio: Tensor,
    user_audio: Tensor,
    user_motion: Tensor,
    r_s: Tensor,
    nfe: int = 10,
    guidance: GuidanceScales | Callable[[int], GuidanceScales] = GuidanceScales(),  # noqa: B008 - frozen dataclass
    seed: int = 0,
) -> Tensor:
    """Loser motion [T, dim_w]: `sample_motion` with the user conditions replaced by the null condition."""
    null_audio, null_motion = null_user_conditions(user_audio, user_motion)
    return sample_motion(reference, avatar_audio, null_audio, null_motion, r_s, nfe, guidance, seed)
