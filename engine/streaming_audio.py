"""Streaming audio features for live use: raw 16 kHz samples in, `wa [n, 512]` frames out.

The official features (spec §4) normalise the whole utterance and let wav2vec2 attend over
the whole clip, which needs the future. This module approximates them causally:

* **Sliding window.** Every `hop_frames` video frames, one fixed-size window of
  `context_frames + hop_frames + lookahead_frames` frames (640 samples each) is encoded; the
  features of its `hop_frames` frames before the lookahead are emitted. Latency beyond the hop
  itself is `lookahead_frames * 40 ms`. Before the stream starts the window sees silence.
* **Running input normalisation.** Instead of whole-utterance mean/variance, an
  exponentially-weighted mean/variance over complete 640-sample frames (time constant
  `norm_time_constant_s`, bias-corrected so the first seconds use the plain average) with a
  floor `min_input_std` on the standard deviation: digital silence stays exactly 0 and low
  noise stays small instead of being blown up to unit variance. Each window is normalised with
  the statistics as of its last frame.
* **Running GroupNorm statistics** (`groupnorm="running"`, default). wav2vec2's first conv
  layer normalises every channel over *time* (GroupNorm with one channel per group), i.e. over
  the whole clip offline; over a short window this would again amplify silence to unit
  variance. The per-channel mean/variance are tracked the same way (exponentially weighted,
  one update per window from the conv steps of the emitted frames) with a variance floor of
  `min_groupnorm_var_ratio * ||w_c||^2` (the channel's response variance to unit white noise).
  `groupnorm="window"` keeps HF's per-window statistics (reference behaviour).

Everything is deterministic: statistics change only at frame and window boundaries, so the
same samples pushed in any chunking give bit-identical features. `StreamingWindowEncoder` is
the pure per-window compute with fixed tensor shapes (ONNX-exportable); `StreamingAudioFeatures`
is the stateful driver whose state is the inspectable `StreamingAudioState`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .audio_encoder import SAMPLES_PER_FRAME, AudioEncoder, decimate_conv_frames

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
    groupnorm: str = "running"  # "running" (tracked statistics) or "window" (HF, per window)
    groupnorm_time_constant_s: float = 10.0
    min_groupnorm_var_ratio: float = 0.1  # GN variance floor / unit-white-noise response

    def __post_init__(self) -> None:
        if self.context_frames < 0 or self.hop_frames < 1 or self.lookahead_frames < 0:
            raise ValueError("need context_frames >= 0, hop_frames >= 1, lookahead_frames >= 0")
        if self.groupnorm not in ("running", "window"):
            raise ValueError(f"groupnorm must be 'running' or 'window', got {self.groupnorm!r}")
        if self.norm_time_constant_s <= 0 or self.groupnorm_time_constant_s <= 0:
            raise ValueError("time constants must be positive")
        if self.min_input_std <= 0 or self.min_groupnorm_var_ratio <= 0:
            raise ValueError("floors must be positive")

    @property
    def window_frames(self) -> int:
        return self.context_frames + self.hop_frames + self.lookahead_frames

    @property
    def window_samples(self) -> int:
        return self.window_frames * SAMPLES_PER_FRAME

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

    `forward(window, gn_sum, gn_sumsq, gn_weight)`:
      window `[B, window_samples]` float32, already normalised (frame-aligned: sample 0 is the
      start of the window's first frame);
      gn_sum, gn_sumsq `[B, 512]`, gn_weight `[B, 1]`: running GroupNorm sums (ignored and
      passed through unchanged when `groupnorm="window"`).
    Returns `(wa [B, hop_frames, 512], gn_sum', gn_sumsq', gn_weight')`; `wa` holds the
    features of window frames `[context, context + hop)`.
    """

    def __init__(self, encoder: AudioEncoder, config: StreamingAudioConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config

    @property
    def groupnorm_channels(self) -> int:
        return self.encoder.wav2vec2.feature_extractor.conv_layers[0].conv.out_channels

    def _running_groupnorm(self, steps: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        cfg = self.config
        first_layer = self.encoder.wav2vec2.feature_extractor.conv_layers[0]
        start = CONV0_STEPS_PER_FRAME * cfg.context_frames
        stop = min(CONV0_STEPS_PER_FRAME * (cfg.context_frames + cfg.hop_frames), steps.shape[-1])
        region = steps[:, :, start:stop]
        decay = cfg.groupnorm_decay
        gn_sum = decay * gn_sum + region.mean(dim=-1)
        gn_sumsq = decay * gn_sumsq + region.square().mean(dim=-1)
        gn_weight = decay * gn_weight + 1.0
        mean = gn_sum / gn_weight
        white_noise_var = first_layer.conv.weight.square().sum(dim=(1, 2))  # [512]
        var = torch.maximum(gn_sumsq / gn_weight - mean.square(), cfg.min_groupnorm_var_ratio * white_noise_var)
        norm = first_layer.layer_norm
        scale = norm.weight / torch.sqrt(var + norm.eps)  # [B, 512]
        normalised = (steps - mean.unsqueeze(-1)) * scale.unsqueeze(-1) + norm.bias.unsqueeze(-1)
        return normalised, gn_sum, gn_sumsq, gn_weight

    def conv_features(self, window: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        """Conv feature encoder with running or per-window GroupNorm -> `[B, 512, 2W-1]`."""
        layers = self.encoder.wav2vec2.feature_extractor.conv_layers
        if self.config.groupnorm == "window":
            steps = layers[0](window.unsqueeze(1))
        else:
            steps = layers[0].conv(window.unsqueeze(1))
            steps, gn_sum, gn_sumsq, gn_weight = self._running_groupnorm(steps, gn_sum, gn_sumsq, gn_weight)
            steps = layers[0].activation(steps)
        for layer in layers[1:]:
            steps = layer(steps)
        return steps, gn_sum, gn_sumsq, gn_weight

    def forward(self, window: Tensor, gn_sum: Tensor, gn_sumsq: Tensor, gn_weight: Tensor):
        cfg = self.config
        if window.shape[-1] != cfg.window_samples:
            raise ValueError(f"window has {window.shape[-1]} samples, expected {cfg.window_samples}")
        steps, gn_sum, gn_sumsq, gn_weight = self.conv_features(window, gn_sum, gn_sumsq, gn_weight)
        frames = decimate_conv_frames(steps, cfg.window_frames).transpose(1, 2)
        hidden = self.encoder.transformer_layers(frames)
        emitted = hidden[:, cfg.context_frames : cfg.context_frames + cfg.hop_frames]
        return self.encoder.audio_projection(emitted), gn_sum, gn_sumsq, gn_weight


@dataclass
class StreamingAudioState:
    """Everything the streaming extractor remembers (batch 1).

    history: raw samples of frames `[history_start_frame, frames_received)` (zeros for frames
    before the stream start, which have negative indices); pending: raw samples of the
    incomplete current frame. input_*: exponentially-weighted sums of per-frame sample mean,
    mean square and weight (float64). gn_*: running GroupNorm sums `[1, 512]`, `[1, 1]`.
    """

    history: np.ndarray
    history_start_frame: int
    pending: np.ndarray
    frames_received: int = 0
    frames_emitted: int = 0
    samples_received: int = 0
    input_sum: float = 0.0
    input_sumsq: float = 0.0
    input_weight: float = 0.0
    gn_sum: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(1, 512))
    gn_sumsq: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(1, 512))
    gn_weight: Tensor = dataclasses.field(default_factory=lambda: torch.zeros(1, 1))
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
    offline frame j (samples `[640 j, 640 j + 640)`); it is emitted once frame
    `j + lookahead_frames` is complete and a whole hop of frames is ready. `flush()` ends the
    stream like the offline encoder (replicate-padding the last sample) and returns the rest,
    so that `push(all) + flush()` gives `ceil(len / 640)` frames.
    """

    def __init__(self, encoder: AudioEncoder, config: StreamingAudioConfig | None = None) -> None:
        self.config = config if config is not None else StreamingAudioConfig()
        self.window_encoder = StreamingWindowEncoder(encoder, self.config)
        self.state = self.initial_state()

    def initial_state(self) -> StreamingAudioState:
        cfg = self.config
        channels = self.window_encoder.groupnorm_channels
        return StreamingAudioState(
            history=np.zeros(cfg.context_frames * SAMPLES_PER_FRAME, dtype=np.float32),
            history_start_frame=-cfg.context_frames,
            pending=np.zeros(0, dtype=np.float32),
            gn_sum=torch.zeros(1, channels),
            gn_sumsq=torch.zeros(1, channels),
            gn_weight=torch.zeros(1, 1),
        )

    def reset(self) -> None:
        """Forget everything (start a new stream)."""
        self.state = self.initial_state()

    @property
    def latency_frames(self) -> int:
        """Worst-case delay, in frames, between a frame's last sample and its feature."""
        return self.config.lookahead_frames + self.config.hop_frames - 1

    @property
    def next_window_end(self) -> int:
        """Frame index (exclusive) the next window ends at."""
        return self.state.frames_emitted + self.config.hop_frames + self.config.lookahead_frames

    def normalised_window(self) -> np.ndarray:
        """The next window's samples `[window_samples]`, normalised with the current statistics."""
        mean, std = self.state.input_mean_std(self.config.min_input_std)
        window = self.state.history[: self.config.window_samples]
        return ((window.astype(np.float64) - mean) / std).astype(np.float32)

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
        st.history = np.concatenate([st.history, frame])
        st.frames_received += 1
        if st.frames_received < self.next_window_end:
            return []
        return [self._encode_next_window()]

    @torch.no_grad()
    def _encode_next_window(self) -> Tensor:
        st, cfg = self.state, self.config
        window = torch.from_numpy(self.normalised_window()).unsqueeze(0)
        wa, st.gn_sum, st.gn_sumsq, st.gn_weight = self.window_encoder(window, st.gn_sum, st.gn_sumsq, st.gn_weight)
        st.frames_emitted += cfg.hop_frames
        drop = cfg.hop_frames * SAMPLES_PER_FRAME
        st.history = st.history[drop:].copy()
        st.history_start_frame += cfg.hop_frames
        return wa[0]
