"""Model configuration: the official `configs/inference.yaml` keys that matter at inference.

`ModelConfig.official()` is the released model; `ModelConfig.from_dict()` accepts the
official yaml/json mapping (unknown keys are ignored, so a fixture's `model_config` loads as is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

SAMPLES_PER_SECOND = 16000


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the Avatar Forcing model.

    Hard-coded constants of the official code (context 2, cross window 2, 4 fusion heads,
    512-wide motion/audio features) are properties, not options.
    """

    input_size: int = 512  # S, image side of the motion autoencoder
    dim_m: int = 20  # motion basis size
    dim_w: int = 512  # motion latent / audio feature width (fixed by the official code)
    dim_a: int = 512  # condition fusion width (fixed by the official code)
    dim_h: int = 1024  # transformer width
    num_heads: int = 8
    transformer_depth: int = 8
    mlp_ratio: float = 4.0
    fps: int = 25
    sampling_rate: int = SAMPLES_PER_SECOND
    sec: int = 2  # first clip = sec * fps frames
    num_frames_per_block: int = 10
    attention_window: int = 2
    num_train_timestep: int = 1000
    only_last_features: bool = False

    def __post_init__(self) -> None:
        if self.dim_w != 512 or self.dim_a != 512:
            raise ValueError("dim_w and dim_a must be 512 (fixed by the official architecture)")
        if self.dim_h % self.num_heads:
            raise ValueError(f"dim_h {self.dim_h} is not divisible by num_heads {self.num_heads}")
        if self.input_size < 64 or self.input_size & (self.input_size - 1):
            raise ValueError(f"input_size must be a power of two >= 64, got {self.input_size}")
        if self.num_frames_per_block != 10 or self.sec * self.fps != 50:
            raise ValueError("the official schedule needs a 50-frame first clip and 10-frame blocks")

    # -- derived constants -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim_h // self.num_heads

    @property
    def clip_frames(self) -> int:
        """K: frames of the first clip (50)."""
        return self.sec * self.fps

    @property
    def block_frames(self) -> int:
        """M: new frames per streaming block (10)."""
        return self.num_frames_per_block

    @property
    def context_frames(self) -> int:
        """C: context frames carried into every block (hard-coded 2 officially)."""
        return 2

    @property
    def window_frames(self) -> int:
        """Tokens of a streaming block: context + new (12)."""
        return self.context_frames + self.block_frames

    @property
    def self_cache_len(self) -> int:
        """Cached self-attention entries (K - M - 2 = 38)."""
        return self.clip_frames - self.block_frames - self.context_frames

    @property
    def cross_cache_len(self) -> int:
        """Cached cross-attention condition frames (2)."""
        return 2

    @property
    def samples_per_frame(self) -> int:
        return self.sampling_rate // self.fps

    @property
    def fusion_heads(self) -> int:
        """Heads of the condition-fusion MHAs (hard-coded 4 officially)."""
        return 4

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def official(cls) -> "ModelConfig":
        return cls()

    @classmethod
    def fixture_small(cls) -> "ModelConfig":
        """The reduced configuration of `fixture_small` (S 64, h 128, 4 heads, depth 2)."""
        return cls(input_size=64, dim_h=128, num_heads=4, transformer_depth=2)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in mapping.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
