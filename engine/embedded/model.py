"""The embedded default avatar model: a small `FlowTransformer` over the 13-parameter motion space.

Same causal diffusion-forcing architecture as the official model (dual motion encoder, causal
blocks, KV cache) with `DEFAULT_MODEL_CONFIG`: motion width 13 (`MOTION_SPACE`, normalized
units), 80-d log-mel audio features, width 128, 4 heads, depth 3, a 1 s (25-frame) first clip
and 4-frame (160 ms) blocks. `load_default()` reads the weights shipped inside the package
(`default_avatar.safetensors` + `default_avatar.json`, the `avatarforcing-flow-transformer`
config layout); `DefaultAvatarModel.stream(...)` returns a `MotionStream` that takes
normalized condition frames and yields normalized motion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.embedded.audio_features import LOG_MEL_DIM
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import MotionStream
from avatarforcing.schemas.motion_space import MOTION_SPACE

WEIGHTS_FILE = "default_avatar.safetensors"
CONFIG_FILE = "default_avatar.json"
CONFIG_FORMAT = "avatarforcing-flow-transformer"

DEFAULT_MODEL_CONFIG = ModelConfig(
    dim_w=MOTION_SPACE.dim,
    dim_a=LOG_MEL_DIM,
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
    """A loaded default avatar: `transformer` (eval mode) and the training `info` of its config."""

    def __init__(self, transformer: FlowTransformer, info: dict[str, Any] | None = None) -> None:
        cfg = transformer.cfg
        if cfg.dim_w != MOTION_SPACE.dim or cfg.dim_a != LOG_MEL_DIM:
            raise ValueError(
                f"default avatar needs dim_w = {MOTION_SPACE.dim} (motion space) and dim_a = {LOG_MEL_DIM} "
                f"(log-mel), got {cfg.dim_w} and {cfg.dim_a}"
            )
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
        """Load `weights` (safetensors of the transformer's parameters) and `config` (JSON with
        "format", "model_config", "info"); a missing or mismatched parameter raises ValueError."""
        from safetensors.torch import load_file

        weights, config = Path(weights), Path(config)
        for path in (weights, config):
            if not path.is_file():
                raise FileNotFoundError(f"default avatar file not found: {path}")
        meta = json.loads(config.read_text())
        if meta.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{config}: format is {meta.get('format')!r}, expected {CONFIG_FORMAT!r}")
        transformer = FlowTransformer(ModelConfig.from_dict(meta["model_config"]))
        state = load_file(str(weights))
        expected = dict(transformer.named_parameters())
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise ValueError(f"{weights}: missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
        with torch.no_grad():
            for name, param in expected.items():
                param.copy_(state[name])
        return cls(transformer.to(device), meta.get("info"))

    def save(self, directory: str | Path, info: dict[str, Any] | None = None) -> tuple[Path, Path]:
        """Write `WEIGHTS_FILE` and `CONFIG_FILE` into `directory`; returns their paths."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().cpu().contiguous() for n, p in self.transformer.named_parameters()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        meta = {
            "format": CONFIG_FORMAT,
            "format_version": 1,
            "model_config": self.cfg.to_dict(),
            "info": info if info is not None else self.info,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
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
