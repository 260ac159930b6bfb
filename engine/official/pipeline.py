"""Raw inputs in, motion blocks out: the engine's streaming front end for one portrait.

`AvatarPipeline` turns 16 kHz audio of both parties (pushed in any chunk sizes) and cropped
user frames into condition features, feeds the `MotionStream`, and decodes blocks of motion
latents into frames on request. Audio features are the causal streaming ones of a live
session; the official whole-utterance features are `AudioEncoder.forward` (reference runner).

Its per-block compute runs in the model's PyTorch modules unless replaced by graph runners of
another backend (`set_audio_window`, `set_motion_encoder`, `set_decoder`; see
`engine/export/live_backend.py`). Those graphs have a fixed frame count N, so the motion encoder
and decoder go through `run_fixed_frames`: chunks of N, the last one padded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from avatarforcing.engine.official.model import AvatarForcingModel
from avatarforcing.engine.official.motion_autoencoder import ReferenceIdentity
from avatarforcing.engine.official.streaming_audio import StreamingAudioConfig, StreamingAudioFeatures
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales
from avatarforcing.engine.stream import LatentBlock, MotionStream


@dataclass(frozen=True)
class PipelineConfig:
    nfe: int = 10
    guidance: GuidanceScales = field(default_factory=GuidanceScales)
    seed: int = 0
    streaming_audio: StreamingAudioConfig = field(default_factory=StreamingAudioConfig)


def images_to_model(frames_uint8: np.ndarray) -> Tensor:
    """[N, S, S, 3] or [S, S, 3] uint8 RGB -> [N, 3, S, S] float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames_uint8))
    if x.dim() == 3:
        x = x[None]
    return (x.permute(0, 3, 1, 2).float() - 127.5) / 127.5


def run_fixed_frames(run: Callable[[Tensor], Tensor], frames: Tensor, n: int) -> Tensor:
    """`frames [T, ...]` through `run`, which takes exactly `n` rows `[n, ...]` and returns one
    row per input row: chunks of `n`, the last one padded by repeating its final row, the padded
    rows' outputs dropped. Returns `[T, ...]` (the outputs' trailing shape and dtype).

    Exact only for graphs that compute every row independently (the motion encoder and the
    decoder: no batch statistics), which is why padding cannot change the real rows."""
    if n < 1:
        raise ValueError(f"frames per call must be >= 1, got {n}")
    outputs = []
    for start in range(0, frames.shape[0], n):
        chunk = frames[start : start + n]
        real = chunk.shape[0]
        if real < n:  # repeat the last row: values the graph has seen, unlike zeros
            chunk = torch.cat([chunk, chunk[-1:].expand(n - real, *chunk.shape[1:])])
        outputs.append(run(chunk)[:real])
    return torch.cat(outputs)


class AvatarPipeline:
    """Streaming avatar motion for one portrait; see module docstring.

    portrait: [1, 3, S, S] float in [-1, 1] (already cropped to the model's input size).
    """

    def __init__(self, model: AvatarForcingModel, portrait: Tensor, config: PipelineConfig | None = None) -> None:
        self.model = model
        self.config = config or PipelineConfig()
        self.device = next(model.parameters()).device
        size = model.cfg.input_size
        if tuple(portrait.shape[-3:]) != (3, size, size):
            raise ValueError(f"portrait must be [1, 3, {size}, {size}], got {tuple(portrait.shape)}")
        with torch.no_grad():
            self.identity: ReferenceIdentity = model.motion_autoencoder.encode_reference(portrait.to(self.device))
        self.motion = MotionStream(
            model.flow_transformer,
            self.identity.r_s,
            FlowMatchingEulerSampler(self.config.nfe, model.cfg.num_train_timestep),
            self.config.guidance,
            seed=self.config.seed,
        )
        self._avatar_audio = StreamingAudioFeatures(model.audio_encoder, self.config.streaming_audio)
        self._user_audio = StreamingAudioFeatures(model.audio_encoder, self.config.streaming_audio)
        mae = model.motion_autoencoder
        self._encode_motion: Callable[[Tensor], Tensor] = mae.encode_motion
        self._decode: Callable[[Tensor], Tensor] = lambda latents: mae.decode(latents, self.identity)
        # N of a fixed-shape motion-encoder / decoder runner (None: the PyTorch module, any N)
        self.motion_frames_per_call: int | None = None
        self.decoder_frames_per_call: int | None = None

    # -- backends ------------------------------------------------------------------------------
    def set_audio_window(self, step: Callable[..., tuple[Tensor, ...]]) -> None:
        """Compute both parties' audio windows with `step` (the positional signature of
        `StreamingWindowEncoder`, fixed shapes); the extractors keep their state."""
        self._avatar_audio.window_step = step
        self._user_audio.window_step = step

    def set_motion_encoder(self, encode: Callable[[Tensor], Tensor], frames_per_call: int) -> None:
        """Encode user frames with `encode`: frames `[N, 3, S, S]` float32 in [-1, 1] -> motion
        latents `[N, dim_w]`, exactly N = `frames_per_call` rows per call."""
        self._encode_motion = lambda frames: run_fixed_frames(encode, frames, frames_per_call)
        self.motion_frames_per_call = frames_per_call

    def set_decoder(self, decode: Callable[[Tensor], Tensor], frames_per_call: int) -> None:
        """Decode with `decode`: motion latents `[N, 512]` -> frames `[N, 3, S, S]` of this
        pipeline's portrait, exactly N = `frames_per_call` rows per call."""
        self._decode = lambda latents: run_fixed_frames(decode, latents, frames_per_call)
        self.decoder_frames_per_call = frames_per_call

    # -- inputs --------------------------------------------------------------------------------
    def push_avatar_audio(self, samples: np.ndarray) -> None:
        """The avatar's voice (the local user), 16 kHz float32 mono."""
        self.motion.push(avatar_audio=self._avatar_audio.push(samples).to(self.device))

    def push_user_audio(self, samples: np.ndarray) -> None:
        """The remote participant's voice, 16 kHz float32 mono."""
        self.motion.push(user_audio=self._user_audio.push(samples).to(self.device))

    @torch.no_grad()
    def push_user_frames(self, frames: Tensor | None, count: int = 1) -> None:
        """Cropped user frames [n, 3, S, S] in [-1, 1]; None = no face visible in `count`
        frames (the null user-motion condition)."""
        if frames is None:
            motion = torch.zeros(count, self.model.cfg.dim_w, device=self.device)
        else:
            motion = self._encode_motion(frames.to(self.device)).to(self.device)
        self.motion.push(user_motion=motion)

    # -- split front end: features (one thread) and motion (another) -------------------------
    def avatar_audio_features(self, samples: np.ndarray) -> Tensor:
        """Streaming features [n, 512] of the avatar's audio (state: the avatar extractor only)."""
        return self._avatar_audio.push(samples).to(self.device)

    def user_audio_features(self, samples: np.ndarray) -> Tensor:
        """Streaming features [n, 512] of the user's audio (state: the user extractor only)."""
        return self._user_audio.push(samples).to(self.device)

    @torch.no_grad()
    def user_motion(self, frames: Tensor | None, count: int = 1) -> Tensor:
        """Motion latents [n, dim_w] of cropped user frames [n, 3, S, S]; None = no face in
        `count` frames (zeros: the null condition). Stateless."""
        if frames is None:
            return torch.zeros(count, self.model.cfg.dim_w, device=self.device)
        return self._encode_motion(frames.to(self.device)).to(self.device)

    def flush_audio_features(self) -> tuple[Tensor, Tensor]:
        """End of the audio: the remaining (avatar, user) features."""
        return self._avatar_audio.flush().to(self.device), self._user_audio.flush().to(self.device)

    def end(self) -> None:
        """End of every input: flush the audio extractors and let the last block out."""
        self.motion.push(avatar_audio=self._avatar_audio.flush().to(self.device))
        self.motion.push(user_audio=self._user_audio.flush().to(self.device))
        self.motion.end()

    def set_guidance(self, guidance: GuidanceScales) -> None:
        self.motion.set_guidance(guidance)

    # -- outputs -------------------------------------------------------------------------------
    def pull(self) -> list[LatentBlock]:
        return self.motion.pull()

    @torch.no_grad()
    def decode(self, block: LatentBlock) -> Tensor:
        """Frames [n, 3, S, S] (float, about [-1, 1]) of a motion block (batch 1)."""
        return self._decode(block.latents[0]).to(self.device)
