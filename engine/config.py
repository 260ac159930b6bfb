"""Model configuration: the official `configs/inference.yaml` keys that matter at inference.

`ModelConfig.official()` is the released model; `ModelConfig.from_dict()` accepts the
official yaml/json mapping (unknown keys are ignored, so a fixture's `model_config` loads as is).

Any consistent shape is accepted (e.g. a small interpretable-motion model with `dim_w=13`,
`dim_a=80`, a 1 s first clip and 4-frame blocks); what the released weights need (512-wide
motion/audio, 50-frame clip, 10-frame blocks) is checked by `check_official_layout()`, which the
official checkpoint loader and the full model (motion autoencoder + wav2vec2) call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the Avatar Forcing model.

    Hard-coded constants of the official code (context 2, 2-frame lookahead, 4 fusion heads)
    are properties, not options. dim_w: motion width (latent or parameter vector); dim_a:
    width of the per-frame audio features, which is also the condition-fusion width (divisible
    by the 4 fusion heads). The official values are the defaults.
    """

    input_size: int = 512  # S, image side of the motion autoencoder
    dim_m: int = 20  # motion basis size
    dim_w: int = 512  # motion width (official: 512-d motion latent)
    dim_a: int = 512  # audio feature width = condition fusion width (official: 512)
    dim_h: int = 1024  # transformer width
    num_heads: int = 8
    transformer_depth: int = 8
    mlp_ratio: float = 4.0
    fps: int = FRAME_RATE
    sampling_rate: int = SAMPLE_RATE
    sec: int = 2  # first clip = sec * fps frames
    num_frames_per_block: int = 10
    attention_window: int = 2
    num_train_timestep: int = 1000
    only_last_features: bool = False
    # Per-dim divisor from the caller's motion units to the model's: the sampler starts from unit
    # noise, so motion whose dims spread 0.05-0.3 (the default space's normalized parameters)
    # would leave the small dims (pose: sway and nods) buried in it; dividing by each dim's
    # spread gives every dim unit spread. None: the units are the model's (the official latent).
    motion_scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.motion_scale is not None:
            object.__setattr__(self, "motion_scale", tuple(float(x) for x in self.motion_scale))
            if len(self.motion_scale) != self.dim_w or min(self.motion_scale) <= 0:
                problems.append(f"motion_scale needs {self.dim_w} positive numbers (one per motion dim)")
        for name in ("dim_w", "dim_a", "dim_h", "num_heads", "transformer_depth", "fps", "sec", "num_frames_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.dim_a % self.fusion_heads:
            problems.append(f"dim_a {self.dim_a} is not divisible by the {self.fusion_heads} condition-fusion heads")
        if self.dim_h % self.num_heads:
            problems.append(f"dim_h {self.dim_h} is not divisible by num_heads {self.num_heads}")
        elif self.head_dim % 2:
            problems.append(f"head width dim_h/num_heads = {self.head_dim} must be even (rotary embedding pairs)")
        if self.input_size < 64 or self.input_size & (self.input_size - 1):
            problems.append(f"input_size must be a power of two >= 64, got {self.input_size}")
        if self.attention_window != 2:
            problems.append(
                f"attention_window must be 2 (the streaming cross-attention cache is 2 frames), got {self.attention_window}"
            )
        if self.self_cache_len < 1:
            problems.append(
                f"first clip of sec*fps = {self.clip_frames} frames is too short for {self.block_frames}-frame blocks: "
                f"it needs at least block + context + 1 = {self.block_frames + self.context_frames + 1} frames "
                "(raise sec or lower num_frames_per_block)"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def official_layout_problems(self) -> list[str]:
        """What keeps this configuration from using the released weights / official encoders."""
        problems = []
        if self.dim_w != 512 or self.dim_a != 512:
            problems.append(f"dim_w and dim_a must be 512 (got {self.dim_w}, {self.dim_a})")
        if self.num_frames_per_block != 10 or self.clip_frames != 50:
            problems.append(
                f"the official schedule needs a 50-frame first clip and 10-frame blocks "
                f"(got {self.clip_frames} and {self.num_frames_per_block})"
            )
        return problems

    def check_official_layout(self) -> None:
        """Raise ValueError unless the shapes are those of the official architecture."""
        problems = self.official_layout_problems()
        if problems:
            raise ValueError("not the official model layout: " + "; ".join(problems))

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
        """Cached cross-attention condition frames (2 = attention_window)."""
        return self.attention_window

    @property
    def samples_per_frame(self) -> int:
        return self.sampling_rate // self.fps

    @property
    def fusion_heads(self) -> int:
        """Heads of the condition-fusion MHAs (hard-coded 4 officially)."""
        return 4

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def official(cls) -> ModelConfig:
        cfg = cls()
        cfg.check_official_layout()
        return cfg

    @classmethod
    def fixture_small(cls) -> ModelConfig:
        """The reduced configuration of `fixture_small` (S 64, h 128, 4 heads, depth 2)."""
        return cls(input_size=64, dim_h=128, num_heads=4, transformer_depth=2)

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in mapping.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
