"""Per-block graphs as `nn.Module`s with flat tensor inputs and outputs (what ONNX sees).

The generator steps (`FirstClipStep`, `BlockStep`) and the streaming audio window
(`StreamingWindowEncoder`) already take and return plain tensors and are exported as they are.
The motion autoencoder's entry points take dataclasses and lists, so they get thin wrappers:

* `DecoderGraph`: motion latents of one block + the portrait's identity tensors -> frames.
  The identity (appearance code `s_r` and the skip features) is an *input*, so one graph (one
  TensorRT engine) serves any portrait.
* `MotionEncoderGraph`: user frames -> motion latents. The motion basis Q is a constant of the
  weights; it is snapshot as a buffer at construction (the QR factorisation itself does not
  export), so build the wrapper after the weights are loaded.
"""

from __future__ import annotations

from torch import Tensor, nn

from avatarforcing.engine.official.motion_autoencoder import MotionAutoencoder, ReferenceIdentity


def feature_input_names(size: int) -> tuple[str, ...]:
    """Names of the decoder's skip-feature inputs, coarse to fine: feat_8, feat_16, ..., feat_S."""
    names, resolution = [], 8
    while resolution <= size:
        names.append(f"feat_{resolution}")
        resolution *= 2
    return tuple(names)


def identity_feeds(identity: ReferenceIdentity, size: int) -> dict[str, Tensor]:
    """The decoder's identity inputs (`s_r` and `feat_*`) of one portrait, by input name."""
    names = feature_input_names(size)
    if len(names) != len(identity.feats):
        raise ValueError(f"identity has {len(identity.feats)} skip features, the decoder expects {len(names)}")
    return {"s_r": identity.s_r, **dict(zip(names, identity.feats))}


class DecoderGraph(nn.Module):
    """`forward(latents [N,512], s_r [1,512], feat_8 [1,C,8,8], ..., feat_S [1,C,S,S])` -> frames
    `[N,3,S,S]` (about [-1, 1], not clamped); equals `MotionAutoencoder.decode`."""

    def __init__(self, mae: MotionAutoencoder) -> None:
        super().__init__()
        self.dec = mae.dec
        self.size = mae.size

    def forward(self, latents: Tensor, s_r: Tensor, *feats: Tensor) -> Tensor:
        return self.dec(s_r + latents, list(feats))


class MotionEncoderGraph(nn.Module):
    """`forward(frames [N,3,S,S] in [-1,1])` -> motion latents `[N,512]`; equals
    `MotionAutoencoder.encode_motion` for the weights present at construction."""

    def __init__(self, mae: MotionAutoencoder) -> None:
        super().__init__()
        self.net_app = mae.enc.net_app
        self.fc = mae.enc.fc
        self.register_buffer("basis_t", mae.dec.direction.q().t().detach().clone(), persistent=False)

    def forward(self, frames: Tensor) -> Tensor:
        code, _ = self.net_app(frames)
        return self.fc(code) @ self.basis_t
