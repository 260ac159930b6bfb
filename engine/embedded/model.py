"""The embedded default avatar model: a small `FlowTransformer` over the 13-parameter motion space.

Same causal diffusion-forcing architecture as the official model (dual motion encoder, causal
blocks, KV cache) with `DEFAULT_MODEL_CONFIG`: motion width 13 (`MOTION_SPACE`, normalized
units), 80-d log-mel audio rows (84 with the voicing history, `audio_conditions.py`), width 128, 4 heads, depth 3, a 1 s (25-frame) first clip
and 4-frame (160 ms) blocks. `load_default()` reads the weights shipped inside the package
(`default_avatar.safetensors` + `default_avatar.json`, the `avatarforcing-flow-transformer`
config layout); `DefaultAvatarModel.stream(...)` returns a `MotionStream` that takes
normalized condition frames and yields normalized motion. A model's audio width says which audio
rows it takes (`audio_conditions.py`): 80 log-mel values, or 84 with the voicing history.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatarforcing.engine.checkpoint_format import load_flow_transformer, save_flow_transformer
from avatarforcing.engine.checkpoint_io import CheckpointError
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_width, has_voicing
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream
from avatarforcing.schemas.motion_space import MOTION_SPACE

WEIGHTS_FILE = "default_avatar.safetensors"
CONFIG_FILE = "default_avatar.json"

DEFAULT_MODEL_CONFIG = ModelConfig(
    dim_w=MOTION_SPACE.dim,
    dim_a=audio_width(DEFAULT_VOICING),
    dim_h=128,
    num_heads=4,
    transformer_depth=3,
    mlp_ratio=4.0,
    sec=1,
    num_frames_per_block=4,
)


@dataclass(frozen=True)
class StreamSettings:
    """Sampling settings of a default-avatar stream: `nfe` sampler steps (nfe - 2 network
    evaluations per block), guidance scales, noise seed."""

    nfe: int = 5
    avatar_scale: float = 2.0
    user_scale: float = 1.5
    seed: int = 0


class DefaultAvatarModel:
    """A loaded default avatar: `transformer` (eval mode), the training `info` of its config, and
    `voicing_history`: whether its audio rows carry the voicing history (width 84) or not (80)."""

    def __init__(self, transformer: FlowTransformer, info: dict[str, Any] | None = None) -> None:
        cfg = transformer.cfg
        if cfg.dim_w != MOTION_SPACE.dim:
            raise ValueError(f"default avatar needs dim_w = {MOTION_SPACE.dim} (motion space), got {cfg.dim_w}")
        self.voicing_history = has_voicing(cfg.dim_a)  # ValueError for another audio width
        self.transformer = transformer.eval()
        self.info = dict(info or {})
        self.motion_space = MOTION_SPACE

    @property
    def cfg(self) -> ModelConfig:
        return self.transformer.cfg

    @classmethod
    def untrained(cls, seed: int = 0, cfg: ModelConfig = DEFAULT_MODEL_CONFIG) -> DefaultAvatarModel:
        """Randomly initialised model (for training from scratch and shape tests)."""
        torch.manual_seed(seed)
        return cls(FlowTransformer(cfg))

    @classmethod
    def from_files(
        cls, weights: str | Path, config: str | Path, device: str | torch.device = "cpu"
    ) -> DefaultAvatarModel:
        """Load `weights` (safetensors of the transformer's parameters) and `config` (JSON in the
        ``avatarforcing-flow-transformer`` format), both in one folder; a missing file or a
        missing or mismatched parameter raises `CheckpointError` naming it."""
        weights, config = Path(weights), Path(config)
        if weights.parent != config.parent:
            raise CheckpointError(f"{weights} and {config} must be in one folder")
        transformer, info = load_flow_transformer(
            weights.parent, device, weights_file=weights.name, config_file=config.name
        )
        return cls(transformer, info)

    def save(self, directory: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Write `WEIGHTS_FILE` and `CONFIG_FILE` into `directory`; returns their paths."""
        directory = save_flow_transformer(
            self.transformer,
            directory,
            info if info is not None else self.info,
            weights_file=WEIGHTS_FILE,
            config_file=CONFIG_FILE,
        )
        return directory / WEIGHTS_FILE, directory / CONFIG_FILE

    def stream(
        self,
        settings: StreamSettings = StreamSettings(),
        reference: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> MotionStream:
        """A fresh `MotionStream`. `reference`: denormalized [13] identity vector (None = neutral).
        Push normalized frames: audio [n, 80], user motion [n, 13]; pulled latents are normalized motion."""
        ref = MOTION_SPACE.neutral() if reference is None else MOTION_SPACE.normalize(reference)
        r_s = torch.from_numpy(np.asarray(ref, np.float32)).reshape(1, -1).to(device)
        self.transformer.to(device)
        return MotionStream(
            self.transformer,
            r_s,
            sampler=FlowMatchingEulerSampler(nfe=settings.nfe),
            guidance=GuidanceScales(settings.avatar_scale, settings.user_scale),
            seed=settings.seed,
        )


def packaged_files() -> tuple[Path, Path]:
    """Paths of the weights and config shipped in `avatarforcing.engine.embedded`."""
    root = resources.files("avatarforcing.engine.embedded")
    return Path(str(root / WEIGHTS_FILE)), Path(str(root / CONFIG_FILE))


def load_default(device: str | torch.device = "cpu") -> DefaultAvatarModel:
    """The default avatar shipped inside the package (raises FileNotFoundError if not installed)."""
    weights, config = packaged_files()
    return DefaultAvatarModel.from_files(weights, config, device)
