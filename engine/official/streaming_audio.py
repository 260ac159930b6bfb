"""Streaming audio features for live use: raw 16 kHz samples in, `wa [n, 512]` frames out.

The official features normalise the whole utterance and let wav2vec2 attend over
the whole clip, which needs the future. This module approximates them causally:

* **Sliding window, cached conv features.** Every `hop_frames` video frames, the transformer
  encodes one fixed-size window of `context_frames + hop_frames + lookahead_frames` frames and
  the features of the `hop_frames` frames before the lookahead are emitted. Latency beyond
  the hop itself is `lookahead_frames * 40 ms`. The conv feature encoder is *local*: the
  decimated conv frame j (conv step 2j) depends only on samples `[640 j, 640 j + 400)`, so conv
  features of the newest `hop + lookahead` frames are computed per window and those of older
  frames are reused from a cache (about a third of the per-window time saved). Before the stream
  starts, the context holds the conv features of silence.
* **Running input normalisation.** Instead of whole-utterance mean/variance, an
  exponentially-weighted mean/variance over complete 640-sample frames (time constant
  `norm_time_constant_s`, bias-corrected so the first seconds use the plain average) with a
  floor `min_input_std` on the standard deviation: digital silence stays exactly 0 and low
  noise stays small instead of being blown up to unit variance. The new samples of a window
  are normalised with the statistics as of the window's last frame.
* **Running GroupNorm statistics.** wav2vec2's first conv layer normalises every channel over
  *time* (GroupNorm with one channel per group), i.e. over the whole clip offline; over a short
  window this would again amplify silence to unit variance. The per-channel mean/variance are
  tracked the same way (exponentially weighted, one update per window from the conv steps of
  the `hop_frames` frames being emitted, so every frame counts once) with a variance floor of
  `min_groupnorm_var_ratio * ||w_c||^2` (the channel's response variance to unit white noise).

Everything is deterministic: statistics change only at frame and window boundaries and every
call has a fixed shape, so the same samples pushed in any chunking give bit-identical
features. `StreamingWindowEncoder` is the pure per-window compute with fixed tensor shapes
(ONNX-exportable); `StreamingAudioFeatures` is the stateful driver whose state is the
inspectable `StreamingAudioState`; its `window_step` (the encoder by default) may be any
callable with the encoder's positional signature, e.g. an exported `audio_window` graph on
another backend: the driver keeps the state, so streaming still equals one-shot. See
docs/streaming_audio.md for measured deviations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from avatarforcing.engine.official.audio_encoder import AudioEncoder, decimate_conv_frames
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

FRAME_SECONDS = 0.04  # 25 fps
CONV0_STRIDE = 5  # first wav2vec2 conv: kernel 10, stride 5 -> 128 steps per video frame
CONV0_STEPS_PER_FRAME = SAMPLES_PER_FRAME // CONV0_STRIDE
INPUT_EPS = 1e-7  # same epsilon as the offline normalisation


@dataclass(frozen=True)
class StreamingAudioConfig:
    """Window geometry and running-normalisation constants of the streaming extractor."""

    context_frames: int = 40  # left context, 1.6 s
    hop_frames: int = 10  # frames emitted per window (one generator block)
    lookahead_frames: int = 3  # right context, 120 ms of extra latency
    norm_time_constant_s: float = 10.0  # EMA time constant of the input mean / variance
    min_input_std: float = 0.01  # floor of the input std in raw float units (-40 dBFS RMS)
    groupnorm_time_constant_s: float = 10.0  # EMA time constant of the GroupNorm statistics
    min_groupnorm_var_ratio: float = 0.5  # GN variance floor / unit-white-noise response

    def __post_init__(self) -> None:
        if self.context_frames < 0 or self.hop_frames < 1 or self.lookahead_frames < 0:
            raise ValueError("need context_frames >= 0, hop_frames >= 1, lookahead_frames >= 0")
        if self.norm_time_constant_s <= 0 or self.groupnorm_time_constant_s <= 0:
            raise ValueError("time constants must be positive")
        if self.min_input_std <= 0 or self.min_groupnorm_var_ratio <= 0:
            raise ValueError("floors must be positive")

    @property
    def window_frames(self) -> int:
        """Tokens the transformer sees per window."""
        return self.context_frames + self.hop_frames + self.lookahead_frames

    @property
    def new_frames(self) -> int:
        """Frames whose samples enter each window call (hop + lookahead)."""
        return self.hop_frames + self.lookahead_frames

    @property
    def new_samples(self) -> int:
        return self.new_frames * SAMPLES_PER_FRAME

    @property
    def input_decay(self) -> float:
        """EMA decay of the input statistics per 640-sample frame."""
        return math.exp(-FRAME_SECONDS / self.norm_time_constant_s)

    @property
    def groupnorm_decay(self) -> float:
        """EMA decay of the GroupNorm statistics per window (= per hop)."""
        return math.exp(-self.hop_frames * FRAME_SECONDS / self.groupnorm_time_constant_s)


class StreamingWindowEncoder(nn.Module):
    """Pure per-window compute with fixed shapes (the part to export).

    `forward(samples, context, gn_sum, gn_sumsq, gn_weight)`:
      samples `[B, (hop + lookahead) * 640]` float32: the window's newest frames, normalised,
      frame-aligned; context `[B, context_frames, 512]`: cached conv features of the frames
      before them; gn_sum, gn_sumsq `[B, 512]`, gn_weight `[B, 1]`: running GroupNorm sums.
    Returns `(wa [B, hop, 512], next_context [B, context_frames, 512], gn_sum', gn_sumsq',
    gn_weight')`: `wa` are the features of the first `hop` new frames; `next_context` is the
    context of the next window (the oldest `hop` frames dropped, the emitted frames appended).
    """

    def __init__(self, encoder: AudioEncoder, config: StreamingAudioConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config

    @property
    def conv_channels(self) -> int:
        return self.encoder.wav2vec2.feature_extractor.conv_layers[-1].conv.out_channels

    @property
    def groupnorm_channels(self) -> int:
        return self.encoder.wav2vec2.feature_extractor.conv_layers[0].conv.out_channels

    def _running_groupnorm(self, steps: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        """GroupNorm of the first conv layer with tracked statistics, updated from the conv
        steps of the first `hop` frames of `steps [B, C, S]`."""
        cfg = self.config
        first_layer = self.encoder.wav2vec2.feature_extractor.conv_layers[0]
        region = steps[:, :, : min(CONV0_STEPS_PER_FRAME * cfg.hop_frames, steps.shape[-1])]
        decay = cfg.groupnorm_decay
        gn_sum = decay * gn_sum + region.mean(dim=-1)
        gn_sumsq = decay * gn_sumsq + region.square().mean(dim=-1)
        gn_weight = decay * gn_weight + 1.0
        mean = gn_sum / gn_weight
        white_noise_var = first_layer.conv.weight.square().sum(dim=(1, 2))  # [C]
        var = torch.maximum(gn_sumsq / gn_weight - mean.square(), cfg.min_groupnorm_var_ratio * white_noise_var)
        norm = first_layer.layer_norm
        scale = norm.weight / torch.sqrt(var + norm.eps)  # [B, C]
        normalised = (steps - mean.unsqueeze(-1)) * scale.unsqueeze(-1) + norm.bias.unsqueeze(-1)
        return normalised, gn_sum, gn_sumsq, gn_weight

    def frame_conv_features(self, samples: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        """Normalised frame-aligned samples `[B, n * 640]` -> conv features `[B, n, 512]`
        (conv step 2j of the offline stack for each frame j) and the updated GroupNorm sums."""
        frames = samples.shape[-1] // SAMPLES_PER_FRAME
        layers = self.encoder.wav2vec2.feature_extractor.conv_layers
        steps = layers[0].conv(samples.unsqueeze(1))
        steps, gn_sum, gn_sumsq, gn_weight = self._running_groupnorm(steps, gn_sum, gn_sumsq, gn_weight)
        steps = layers[0].activation(steps)
        for layer in layers[1:]:
            steps = layer(steps)
        return decimate_conv_frames(steps, frames).transpose(1, 2), gn_sum, gn_sumsq, gn_weight

    def forward(self, samples: Tensor, context: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        cfg = self.config
        if samples.shape[-1] != cfg.new_samples or context.shape[1] != cfg.context_frames:
            raise ValueError(
                f"expected {cfg.new_samples} new samples and {cfg.context_frames} context frames, "
                f"got {samples.shape[-1]} and {context.shape[1]}"
            )
        new, gn_sum, gn_sumsq, gn_weight = self.frame_conv_features(samples, gn_sum, gn_sumsq, gn_weight)
        frames = torch.cat([context, new], dim=1)  # [B, W, 512]
        hidden = self.encoder.transformer_layers(frames)
        emitted = hidden[:, cfg.context_frames : cfg.context_frames + cfg.hop_frames]
        next_context = frames[:, cfg.hop_frames : cfg.hop_frames + cfg.context_frames]
        return self.encoder.audio_projection(emitted), next_context, gn_sum, gn_sumsq, gn_weight

    @torch.no_grad()
    def silence_context(self) -> Tensor:
        """Context before the stream starts: conv features of digital silence `[1, context, 512]`
        (GroupNorm of an all-zero input is its bias, whatever the statistics)."""
        zeros = torch.zeros(1, SAMPLES_PER_FRAME)
        channels = self.groupnorm_channels
        frame, *_ = self.frame_conv_features(
            zeros, torch.zeros(1, channels), torch.zeros(1, channels), torch.zeros(1, 1)
        )
        return frame.expand(1, self.config.context_frames, frame.shape[-1]).contiguous()


@dataclass
class StreamingAudioState:
    """Everything the streaming extractor remembers (batch 1).

    new_samples: raw samples of the complete frames `[frames_emitted, frames_received)` not yet
    emitted; pending: raw samples of the incomplete current frame; context: cached conv
    features `[1, context_frames, 512]` of the frames before `frames_emitted`. input_*:
    exponentially-weighted sums of per-frame sample mean, mean square and weight (float64).
    gn_*: running GroupNorm sums `[1, 512]`, `[1, 512]`, `[1, 1]`.
    """

    new_samples: np.ndarray
    pending: np.ndarray
    context: Tensor
    gn_sum: Tensor
    gn_sumsq: Tensor
    gn_weight: Tensor
    frames_received: int = 0
    frames_emitted: int = 0
    samples_received: int = 0
    input_sum: float = 0.0
    input_sumsq: float = 0.0
    input_weight: float = 0.0
    last_sample: float = 0.0

    def input_mean_std(self, min_std: float) -> tuple[float, float]:
        """Current input normaliser (mean, std) including the floor and epsilon."""
        if self.input_weight == 0.0:
            mean, var = 0.0, 0.0
        else:
            mean = self.input_sum / self.input_weight
            var = max(self.input_sumsq / self.input_weight - mean * mean, 0.0)
        return mean, math.sqrt(max(var, min_std * min_std) + INPUT_EPS)


class StreamingAudioFeatures:
    """Stateful streaming extractor: `push(samples)` -> newly computable `wa` frames.

    Samples are raw 16 kHz mono float32 (any chunk size). Frame j of the output corresponds to
    offline frame j (samples `[640 j, 640 j + 640)`); frames come out `hop_frames` at a time,
    as soon as frame `j + lookahead_frames` of the last of them is complete. `flush()` ends the
    stream like the offline encoder (replicate-padding the last sample) and returns the rest,
    so that `push(all) + flush()` gives `ceil(len / 640)` frames.
    """

    def __init__(self, encoder: AudioEncoder, config: StreamingAudioConfig | None = None) -> None:
        self.config = config if config is not None else StreamingAudioConfig()
        self.window_encoder = StreamingWindowEncoder(encoder, self.config)
        # what computes one window: `(samples [1, new_samples], context [1, ctx, Cc], gn_sum,
        # gn_sumsq [1, C0], gn_weight [1, 1]) -> (features [1, hop, 512], context', gn_sum',
        # gn_sumsq', gn_weight')`, float32; replaceable by a graph runner of another backend
        self.window_step: Callable[..., tuple[Tensor, ...]] = self.window_encoder
        self._silence_context = self.window_encoder.silence_context()
        self.state = self.initial_state()

    def initial_state(self) -> StreamingAudioState:
        channels = self.window_encoder.groupnorm_channels
        return StreamingAudioState(
            new_samples=np.zeros(0, dtype=np.float32),
            pending=np.zeros(0, dtype=np.float32),
            context=self._silence_context.clone(),
            gn_sum=torch.zeros(1, channels),
            gn_sumsq=torch.zeros(1, channels),
            gn_weight=torch.zeros(1, 1),
        )

    def reset(self) -> None:
        """Forget everything (start a new stream). Call after loading other weights too."""
        self._silence_context = self.window_encoder.silence_context()
        self.state = self.initial_state()

    @property
    def latency_frames(self) -> int:
        """Worst-case delay, in frames, between a frame's last sample and its feature."""
        return self.config.lookahead_frames + self.config.hop_frames - 1

    def normalised_new_samples(self) -> np.ndarray:
        """The buffered new samples normalised with the current statistics (float32)."""
        mean, std = self.state.input_mean_std(self.config.min_input_std)
        return ((self.state.new_samples.astype(np.float64) - mean) / std).astype(np.float32)

    def push(self, samples: np.ndarray) -> Tensor:
        """Append raw samples; returns the features `[n, 512]` that became computable (n >= 0)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if samples.size == 0:
            return self._empty()
        st = self.state
        st.samples_received += samples.size
        st.last_sample = float(samples[-1])
        data = np.concatenate([st.pending, samples]) if st.pending.size else samples
        complete = data.size // SAMPLES_PER_FRAME
        outputs = []
        for k in range(complete):
            frame = data[k * SAMPLES_PER_FRAME : (k + 1) * SAMPLES_PER_FRAME]
            outputs.extend(self._accept_frame(frame, update_statistics=True))
        st.pending = data[complete * SAMPLES_PER_FRAME :].copy()
        return torch.cat(outputs) if outputs else self._empty()

    def flush(self) -> Tensor:
        """End of stream: pad with the last sample and return the remaining frames.

        Padding does not update the running statistics. Call `reset()` before reusing.
        """
        st = self.state
        total_frames = -(-st.samples_received // SAMPLES_PER_FRAME)
        outputs = []
        if st.pending.size:
            fill = np.full(SAMPLES_PER_FRAME - st.pending.size, st.last_sample, dtype=np.float32)
            outputs.extend(self._accept_frame(np.concatenate([st.pending, fill]), update_statistics=False))
            st.pending = np.zeros(0, dtype=np.float32)
        padding = np.full(SAMPLES_PER_FRAME, st.last_sample, dtype=np.float32)
        while st.frames_emitted < total_frames:
            outputs.extend(self._accept_frame(padding, update_statistics=False))
        features = torch.cat(outputs) if outputs else self._empty()
        emitted_before = st.frames_emitted - features.shape[0]
        return features[: max(total_frames - emitted_before, 0)]

    def _empty(self) -> Tensor:
        return torch.zeros(0, self.window_encoder.encoder.audio_projection[0].out_features)

    def _accept_frame(self, frame: np.ndarray, update_statistics: bool) -> list[Tensor]:
        st = self.state
        if update_statistics:
            values = frame.astype(np.float64)
            decay = self.config.input_decay
            st.input_sum = decay * st.input_sum + values.mean()
            st.input_sumsq = decay * st.input_sumsq + np.square(values).mean()
            st.input_weight = decay * st.input_weight + 1.0
        st.new_samples = np.concatenate([st.new_samples, frame])
        st.frames_received += 1
        if st.frames_received < st.frames_emitted + self.config.new_frames:
            return []
        return [self._encode_window()]

    @torch.no_grad()
    def _encode_window(self) -> Tensor:
        st, cfg = self.state, self.config
        samples = torch.from_numpy(self.normalised_new_samples()).unsqueeze(0)
        wa, st.context, st.gn_sum, st.gn_sumsq, st.gn_weight = self.window_step(
            samples, st.context, st.gn_sum, st.gn_sumsq, st.gn_weight
        )
        st.frames_emitted += cfg.hop_frames
        st.new_samples = st.new_samples[cfg.hop_frames * SAMPLES_PER_FRAME :].copy()
        return wa[0]
