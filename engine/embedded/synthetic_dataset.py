"""Write synthetic conversations as a training dataset (fixed avatarforcing-dataset format).

Each conversation gives two items, one per side (`<conv>-a`: party 0 is the avatar, party 1 the
user; `<conv>-b`: the reverse). Motion and reference are stored in *normalized* units (what the
model works in; 0 = neutral = the null condition); audio as `audio_conditions` rows (log-mel,
and the voicing history when `voicing_history` is on). With `nod_loss_weight` != 1 each item
also carries a `loss_weight`: the head pitch's error weighs that much in the nod window after
each of the user's listener pauses (`metrics.listener_pauses`, `metrics.NOD_WINDOW`), 1
elsewhere. The last `ceil(N * heldout_fraction)` conversations (both sides) form the held-out
split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_conditions, audio_width
from avatarforcing.engine.embedded.conversation import Conversation, generate_conversation
from avatarforcing.engine.embedded.speech import espeak_available
from avatarforcing.schemas.motion_space import MOTION_SPACE


@dataclass(frozen=True)
class SynthSettings:
    """What `avatarforcing synth` generates: `conversations` of `seconds` each from `seed`;
    `voicing_history`: the audio rows carry it (84 wide) or not (80); `nod_loss_weight`: the
    weight of the head pitch's training error after the user's listener pauses (1: no weights
    written)."""

    conversations: int = 100
    seconds: float = 40.0
    seed: int = 0
    heldout_fraction: float = 0.1
    use_espeak: bool | None = None
    voicing_history: bool = DEFAULT_VOICING
    nod_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.nod_loss_weight > 0:
            raise ValueError(f"nod loss weight must be > 0, got {self.nod_loss_weight}")
        if self.conversations < 1:
            raise ValueError(f"conversations must be >= 1, got {self.conversations}")
        if self.seconds < 2:
            raise ValueError(f"seconds must be >= 2, got {self.seconds}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout fraction must be in [0, 1), got {self.heldout_fraction}")

    def conversation_seed(self, index: int) -> int:
        return self.seed * 1_000_003 + index

    def split_of(self, index: int) -> str:
        heldout = math.ceil(self.conversations * self.heldout_fraction)
        return "heldout" if index >= self.conversations - heldout else "train"


def conversation_items(
    conv: Conversation, voicing_history: bool = DEFAULT_VOICING, nod_loss_weight: float = 1.0
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Both sides of a conversation as (suffix, tensors) in the dataset's item layout."""
    from avatarforcing.engine.training.dataset import conversation_sides

    sides = conversation_sides(
        [audio_conditions(p.audio, voicing_history) for p in conv.parties],
        [MOTION_SPACE.normalize(p.motion) for p in conv.parties],
        [MOTION_SPACE.normalize(p.reference) for p in conv.parties],
        [p.energy for p in conv.parties],
    )
    if nod_loss_weight != 1.0:
        for _, tensors in sides:
            tensors["loss_weight"] = nod_loss_weights(tensors["user_audio"], tensors["avatar_audio"], nod_loss_weight)
    return sides


def nod_loss_weights(user_audio: np.ndarray, avatar_audio: np.ndarray, weight: float) -> np.ndarray:
    """float32 [T, dim_w]: `weight` on the head pitch in the nod window after each of the user's
    listener pauses, 1 elsewhere; audio rows [T, >= 80] as `audio_conditions` writes them."""
    from avatarforcing.engine.embedded.audio_features import voiced_frames
    from avatarforcing.engine.training.metrics import NOD_WINDOW, listener_pauses

    out = np.ones((len(user_audio), MOTION_SPACE.dim), np.float32)
    for t in listener_pauses(voiced_frames(user_audio), voiced_frames(avatar_audio)):
        out[t + NOD_WINDOW[0] : t + NOD_WINDOW[1], MOTION_SPACE.index("pitch")] = weight
    return out


def write_synthetic_dataset(
    root: str | Path, settings: SynthSettings, on_conversation: Callable[[int, int], None] | None = None
) -> dict:
    """Generate and write the dataset under `root`; returns the manifest's `info` dict."""
    from avatarforcing.engine.training.dataset import create_dataset, write_item

    use_espeak = espeak_available() if settings.use_espeak is None else settings.use_espeak
    info = {
        "generator": "avatarforcing.engine.embedded.conversation",
        "seed": settings.seed,
        "conversations": settings.conversations,
        "seconds": settings.seconds,
        "heldout_fraction": settings.heldout_fraction,
        "speech": "espeak-ng" if use_espeak else "formant",
        "motion_units": "normalized",
        "audio_features": ("log-mel 80 + voicing history 4" if settings.voicing_history else "log-mel 80")
        + " (avatarforcing.engine.embedded.audio_conditions)",
    }
    if settings.nod_loss_weight != 1.0:
        info["nod_loss_weight"] = settings.nod_loss_weight
    create_dataset(root, "default", audio_width(settings.voicing_history), MOTION_SPACE.dim, info)
    for index in range(settings.conversations):
        conv = generate_conversation(settings.conversation_seed(index), settings.seconds, use_espeak)
        for suffix, tensors in conversation_items(conv, settings.voicing_history, settings.nod_loss_weight):
            write_item(
                root,
                f"conv{index:05d}-{suffix}",
                tensors,
                settings.split_of(index),
                source=f"synthetic seed {conv.seed}",
            )
        if on_conversation is not None:
            on_conversation(index + 1, settings.conversations)
    return info
