"""The whole Avatar Forcing model: motion autoencoder, audio encoder, flow transformer.

Child names give the official state-dict prefixes (`motion_autoencoder.`, `audio_encoder.`,
`flow_transformer.`; spec Appendix A).
"""

from __future__ import annotations

import torch
from torch import nn

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.official.audio_encoder import AudioEncoder
from avatarforcing.engine.official.formula_weights import apply_formula_weights
from avatarforcing.engine.official.motion_autoencoder import MotionAutoencoder


class AvatarForcingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, wav2vec2_config=None) -> None:
        super().__init__()
        if cfg.dim_w != 512 or cfg.dim_a != 512:
            raise ValueError(
                f"the full model (motion autoencoder + wav2vec2 audio encoder) needs dim_w = dim_a = 512, got "
                f"{cfg.dim_w}, {cfg.dim_a}; other widths use FlowTransformer alone (engine.flow_checkpoint)"
            )
        self.cfg = cfg
        self.motion_autoencoder = MotionAutoencoder(cfg)
        self.audio_encoder = AudioEncoder(wav2vec2_config)
        self.flow_transformer = FlowTransformer(cfg)
        self.eval()

    @torch.no_grad()
    def refresh(self) -> AvatarForcingModel:
        """Recompute what derives from the weights (the motion basis Q). Call after loading."""
        self.motion_autoencoder.refresh_basis()
        return self

    @classmethod
    def with_formula_weights(cls, cfg: ModelConfig, seed: int = 0, wav2vec2_config=None) -> AvatarForcingModel:
        """A model whose every parameter is the fixtures' deterministic formula value."""
        model = cls(cfg, wav2vec2_config)
        apply_formula_weights(model, seed)
        return model.refresh()
