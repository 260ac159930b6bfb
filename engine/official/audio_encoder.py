"""Audio encoder of Avatar Forcing: wav2vec2-base layer outputs -> `wa`.

The official wrapper replaces the HuggingFace forward: it decimates the conv features to the
video frame rate *before* the transformer and keeps the outputs of all 12 transformer layers.
This module runs the HF submodules itself (no `output_hidden_states`, no subclassing), so it
works on transformers 4.57+ and 5.x alike. Parameter names match the official checkpoint keys
`audio_encoder.wav2vec2.*` and `audio_encoder.audio_projection.*` (spec Appendix A).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers
from torch import Tensor, nn

from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

NORMALISATION_EPS = 1e-7  # Wav2Vec2FeatureExtractor's variance epsilon


def normalize_utterance(audio: np.ndarray) -> np.ndarray:
    """Whole-utterance zero-mean / unit-variance normalisation, float32, as wav2vec2's feature extractor does before the official features.

    Same arithmetic as `Wav2Vec2FeatureExtractor` (do_normalize=True) under numpy 2:
    `(x - mean(x)) / sqrt(var(x) + 1e-7)` in float32 with the population variance.
    `audio`: 1-D samples (any float dtype, cast to float32 first as the extractor does).
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D audio, got shape {x.shape}")
    mean = x.mean()
    scale = np.sqrt(x.var() + np.float32(NORMALISATION_EPS))
    return ((x - mean) / scale).astype(np.float32, copy=False)


def pad_to_frames(audio: Tensor, num_frames: int) -> Tensor:
    """Right-pad `audio [B, L]` by repeating its last sample to exactly `num_frames * 640`."""
    target = num_frames * SAMPLES_PER_FRAME
    length = audio.shape[-1]
    if length == 0 or length > target:
        raise ValueError(f"audio of {length} samples does not fit {num_frames} frames ({target} samples)")
    if length == target:
        return audio
    tail = audio[:, -1:].expand(audio.shape[0], target - length)
    return torch.cat([audio, tail], dim=1)


def decimate_conv_frames(conv_features: Tensor, num_frames: int) -> Tensor:
    """`[B, C, 2T-1]` conv features -> `[B, C, T]` at the video rate.

    The official code resamples with `F.interpolate(..., size=T, mode="linear",
    align_corners=True)`; because N - 1 = 2(T - 1) the source positions are exactly 0, 2, 4, ...
    with weights 0/1, so taking every second step is bit-identical and
    exports as a plain strided slice.
    """
    steps = conv_features.shape[-1]
    if steps != 2 * num_frames - 1:
        raise ValueError(f"conv feature encoder gave {steps} steps, expected 2*{num_frames}-1")
    return conv_features[:, :, ::2]


def _layer_output(result: Tensor | tuple) -> Tensor:
    """HF encoder layers return a tensor (5.x) or a tuple whose first item is it (4.x)."""
    return result if isinstance(result, Tensor) else result[0]


class AudioEncoder(nn.Module):
    """wav2vec2 (base-960h architecture) + `audio_projection` -> per-frame audio features.

    Children (official key prefixes): `wav2vec2` (HF `Wav2Vec2Model`) and `audio_projection`
    (Linear(12*768 -> 512), LayerNorm(512), SiLU). wav2vec2 is a frozen feature extractor: it
    always runs in eval mode (no dropout, no layer-drop, no SpecAugment masking), even after
    `.train()`.
    """

    num_layers_kept = 12  # the official wrapper hard-codes 12 * 768 projection inputs

    def __init__(self, wav2vec2_config: transformers.Wav2Vec2Config | None = None) -> None:
        super().__init__()
        config = wav2vec2_config if wav2vec2_config is not None else transformers.Wav2Vec2Config()
        if config.num_hidden_layers != self.num_layers_kept or config.feat_extract_norm != "group":
            raise ValueError("AudioEncoder needs the wav2vec2-base layout (12 layers, group-norm conv stack)")
        self.wav2vec2 = transformers.Wav2Vec2Model(config)
        width = config.hidden_size * self.num_layers_kept
        self.audio_projection = nn.Sequential(nn.Linear(width, 512), nn.LayerNorm(512), nn.SiLU())
        self.wav2vec2.eval()

    def train(self, mode: bool = True) -> AudioEncoder:
        super().train(mode)
        self.wav2vec2.eval()
        return self

    @property
    def hidden_width(self) -> int:
        """Width of `hidden_states` output: 12 * 768 = 9216."""
        return self.wav2vec2.config.hidden_size * self.num_layers_kept

    def conv_features(self, audio: Tensor) -> Tensor:
        """Conv feature encoder: normalised audio `[B, L]` -> `[B, 512, N]` (50 Hz steps)."""
        return self.wav2vec2.feature_extractor(audio)

    def transformer_layers(self, frame_features: Tensor) -> Tensor:
        """`[B, T, 512]` conv features at 25 Hz -> 12 layer outputs stacked `[B, T, 12*768]`.

        Feature projection (LayerNorm -> Linear), positional conv added, encoder LayerNorm,
        then the 12 post-LN layers; feature index = layer * 768 + channel (layer 0 = first).
        """
        w2v = self.wav2vec2
        hidden = w2v.feature_projection.projection(w2v.feature_projection.layer_norm(frame_features))
        encoder = w2v.encoder
        hidden = encoder.layer_norm(hidden + encoder.pos_conv_embed(hidden))
        outputs = []
        for layer in encoder.layers:
            hidden = _layer_output(layer(hidden, attention_mask=None))
            outputs.append(hidden)
        stacked = torch.stack(outputs, dim=2)  # [B, T, 12, 768]
        return stacked.reshape(stacked.shape[0], stacked.shape[1], -1)

    def hidden_states(self, audio: Tensor, num_frames: int) -> Tensor:
        """Normalised audio `[B, L]` (L <= T*640) -> wav2vec2 layer outputs `[B, T, 9216]`."""
        audio = pad_to_frames(audio, num_frames)
        conv = decimate_conv_frames(self.conv_features(audio), num_frames)
        return self.transformer_layers(conv.transpose(1, 2))

    def forward(self, audio: Tensor, num_frames: int) -> Tensor:
        """Normalised audio `[B, L]` (L <= T*640) -> audio features `wa [B, T, 512]`."""
        return self.audio_projection(self.hidden_states(audio, num_frames))


UTTERANCE_CHUNK_FRAMES = 500  # 20 s: wav2vec2 attention over longer audio needs too much memory


@torch.no_grad()
def utterance_features(encoder: AudioEncoder, samples: np.ndarray, frames: int) -> np.ndarray:
    """Offline audio features of a whole recording, as the official model was trained on them.

    `samples`: float 16 kHz mono, at least ``frames * 640`` long; normalised over the whole
    utterance, then encoded in chunks of at most `UTTERANCE_CHUNK_FRAMES` frames.
    Returns float32 ``[frames, dim_a]`` (one row per 25 fps video frame).
    """
    audio = normalize_utterance(np.asarray(samples, np.float32)[: frames * SAMPLES_PER_FRAME])
    device = next(encoder.parameters()).device
    pieces = np.array_split(np.arange(frames), max(1, -(-frames // UTTERANCE_CHUNK_FRAMES)))
    rows = []
    for piece in pieces:
        chunk = audio[piece[0] * SAMPLES_PER_FRAME : (piece[-1] + 1) * SAMPLES_PER_FRAME]
        rows.append(encoder(torch.from_numpy(chunk)[None].to(device), len(piece))[0].float().cpu().numpy())
    return np.concatenate(rows)
