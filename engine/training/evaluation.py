"""Evaluate a flow-transformer checkpoint on a dataset split: stream every conversation side
through `MotionStream` (as at inference), optionally through the embedded avatar's output
smoothing (as the `default` engine shows it), and compute the metrics of `metrics.evaluate`."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from avatarforcing.engine.checkpoint_format import load_flow_transformer
from avatarforcing.engine.embedded.audio_features import voiced_frames
from avatarforcing.engine.guidance_schedule import VoicedGuidance
from avatarforcing.engine.sampler import GuidanceScales
from avatarforcing.engine.training.dataset import ConversationDataset
from avatarforcing.engine.training.losers import make_loser, sample_motion
from avatarforcing.engine.training.metrics import ConversationMotion, evaluate, groups_for_space


def evaluate_checkpoint(
    data: str | os.PathLike,
    checkpoint: str | os.PathLike | None,
    split: str = "heldout",
    drop_user: bool = False,
    nfe: int = 10,
    guidance: GuidanceScales = GuidanceScales(),  # noqa: B008 - GuidanceScales is a frozen dataclass
    seed: int = 0,
    device: str = "cpu",
    smoothing: Callable[[], Callable[[np.ndarray, int], np.ndarray]] | None = None,
    listen: GuidanceScales | None = None,
    release_frames: int = 5,
) -> dict[str, dict[str, float]]:
    """Metric table (see `metrics.evaluate`) of the checkpoint's samples on `split`: each metric
    for the generated motion and, where it has one, for the ground truth.
    `checkpoint` None: the embedded avatar shipped in the package.
    drop_user: sample with the user's conditions null (what the stage-2 losers are).
    smoothing: makes a fresh causal filter per conversation side (e.g.
    `avatarforcing.engine.embedded.smoothing.MotionSmoother`), called as ``filter(motion [T, D],
    first_frame=0)`` on the generated motion, as a live engine would apply it.
    listen: sample as a live session does: `guidance` while the avatar speaks, `listen` while it
    listens (`engine.guidance_schedule.VoicedGuidance` on the avatar's voiced frames, with
    `release_frames`); needs log-mel audio features (the default space). None: `guidance`
    throughout."""
    dataset = ConversationDataset(data, split)
    if not len(dataset):
        raise ValueError(f"{data}: the {split!r} split is empty")
    if checkpoint is None:
        from avatarforcing.engine.embedded.model import packaged_files

        weights, config = packaged_files()
        model, _ = load_flow_transformer(weights.parent, device, weights_file=weights.name, config_file=config.name)
    else:
        model, _ = load_flow_transformer(checkpoint, device)
    h = dataset.header
    if (model.cfg.dim_a, model.cfg.dim_w) != (h.dim_a, h.dim_w):
        raise ValueError(
            f"checkpoint dims (dim_a {model.cfg.dim_a}, dim_w {model.cfg.dim_w}) differ from the dataset's ({h.dim_a}, {h.dim_w})"
        )
    if listen is not None and h.space != "default":
        raise ValueError("guidance that follows the avatar's voice needs log-mel audio features (the default space)")
    conversations = []
    for index in range(len(dataset)):
        item = dataset[index]
        sample = make_loser if drop_user else sample_motion
        user_voiced = avatar_voiced = None
        if h.space == "default":  # log-mel audio features: voicing for the nod response and the schedule
            user_voiced, avatar_voiced = (
                voiced_frames(item["user_audio"].numpy()),
                voiced_frames(item["avatar_audio"].numpy()),
            )
        schedule = guidance if listen is None else VoicedGuidance(avatar_voiced, guidance, listen, release_frames)
        generated = sample(
            model,
            item["avatar_audio"],
            item["user_audio"],
            item["user_motion"],
            item["reference"],
            nfe,
            schedule,
            seed + index,
        )
        energy = item["avatar_energy"].numpy() if "avatar_energy" in item else None
        motion = generated.numpy()
        if smoothing is not None:
            motion = smoothing()(motion, 0)
        conversations.append(
            ConversationMotion(
                motion, item["avatar_motion"].numpy(), item["user_motion"].numpy(), energy, user_voiced, avatar_voiced
            )
        )
    table = evaluate(conversations, groups_for_space(h.space, h.dim_w))
    table["conversations"] = {"generated": float(len(conversations))}
    return table
