"""Streaming motion generation: conditions in, motion-latent blocks out.

`MotionStream` owns an explicit `StreamState` (caches, context latents, buffered condition
frames, frame counter, guidance, noise generator state). Condition frames (avatar audio
features, user audio features, user motion latents, each [n, 512] at 25 fps) are pushed
incrementally; `pull()` returns every block that has become computable: the 50-frame first
clip, then 10-frame blocks. `generate()` is the same loop run to the end, so streaming and
one-shot give identical latents.

Windows past the last available frame of an ended stream replicate that frame (official
padding); a stream with no frame at all contributes zeros (the null condition).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.generator_step import BlockStep, FirstClipStep
from avatarforcing.engine.motion_units import from_model_units, to_model_units
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales

STREAMS = ("avatar_audio", "user_audio", "user_motion")

NoiseSource = Callable[[tuple[int, ...]], Tensor]


@dataclass
class ConditionBuffer:
    """Frames [B, n, 512] of one condition stream, starting at absolute frame `start`."""

    frames: Tensor
    start: int = 0
    ended: bool = False

    @property
    def end(self) -> int:
        """Absolute index one past the last pushed frame."""
        return self.start + self.frames.shape[1]

    def append(self, frames: Tensor) -> None:
        self.frames = torch.cat((self.frames, frames.to(self.frames)), dim=1)

    def covers(self, stop: int) -> bool:
        return self.ended or self.end >= stop

    def window(self, first: int, stop: int) -> Tensor:
        """Frames [first, stop) as [B, stop-first, 512]; replicate-padded past the end."""
        length = stop - first
        lo, hi = first - self.start, min(stop, self.end) - self.start
        if lo < 0:
            raise IndexError(f"frame {first} was already dropped (buffer starts at {self.start})")
        if hi <= lo:
            if self.frames.shape[1] == 0:
                return self.frames.new_zeros(self.frames.shape[0], length, self.frames.shape[2])
            last = self.frames[:, -1:]
            return last.expand(-1, length, -1).clone()
        part = self.frames[:, lo:hi]
        if part.shape[1] < length:
            part = torch.cat((part, part[:, -1:].expand(-1, length - part.shape[1], -1)), dim=1)
        return part

    def drop_before(self, frame: int) -> None:
        cut = max(0, min(frame, self.end) - self.start)
        if cut:
            self.frames = self.frames[:, cut:]
            self.start += cut


@dataclass
class StreamState:
    """Everything a motion stream carries from one block to the next.

    next_frame: absolute index of the first frame of the next block (0 before the first clip).
    self_k/self_v [depth,3B,H,38,d], cross_k/cross_v [depth,3B,H,2,d]: caches (unrotated keys).
    context [B,2,512]: final latents of the two frames before `next_frame`.
    """

    buffers: dict[str, ConditionBuffer]
    guidance: GuidanceScales = field(default_factory=GuidanceScales)
    next_frame: int = 0
    total_frames: int | None = None  # known once every audio stream has ended
    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None
    context: Tensor | None = None
    rng_state: Tensor | None = None

    def tensors(self) -> dict[str, Tensor]:
        out = {name: buf.frames.contiguous() for name, buf in self.buffers.items()}
        for name in ("self_k", "self_v", "cross_k", "cross_v", "context", "rng_state"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.contiguous()
        return out

    def metadata(self) -> dict:
        return {
            "next_frame": self.next_frame,
            "total_frames": self.total_frames,
            "guidance": [self.guidance.avatar, self.guidance.user],
            "buffers": {n: {"start": b.start, "ended": b.ended} for n, b in self.buffers.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the state as safetensors (tensors) with its metadata as JSON in the header."""
        from safetensors.torch import save_file

        save_file(
            {k: v.cpu() for k, v in self.tensors().items()}, str(path), metadata={"state": json.dumps(self.metadata())}
        )

    @classmethod
    def load(cls, path: str | Path) -> StreamState:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        buffers = {n: ConditionBuffer(tensors[n], info["start"], info["ended"]) for n, info in meta["buffers"].items()}
        return cls(
            buffers=buffers,
            guidance=GuidanceScales(*meta["guidance"]),
            next_frame=meta["next_frame"],
            total_frames=meta["total_frames"],
            **{k: tensors.get(k) for k in ("self_k", "self_v", "cross_k", "cross_v", "context", "rng_state")},
        )


@dataclass
class LatentBlock:
    """Latents [B, n, 512] of frames start .. start + n - 1."""

    start: int
    latents: Tensor

    @property
    def stop(self) -> int:
        return self.start + self.latents.shape[1]


class StoredNoise:
    """Noise source that replays given tensors in order (fixtures, reproducibility)."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self._tensors = list(tensors)
        self._next = 0

    def __call__(self, shape: tuple[int, ...]) -> Tensor:
        if self._next >= len(self._tensors):
            raise RuntimeError("stored noise exhausted")
        tensor = self._tensors[self._next]
        self._next += 1
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"stored noise has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        return tensor


class MotionStream:
    """Streaming sampler of avatar motion latents for one reference identity.

    r_s [B, dim_w] is the reference motion. Pushed condition frames are [n, D] or [B, n, D] with
    D = dim_a for the two audio-feature streams and dim_w for user motion (512 officially).
    Motion in (r_s, user motion) and out (blocks' latents) is in the caller's units; the model's
    `motion_scale` converts (`engine.motion_units`), the state holds model units.
    """

    def __init__(
        self,
        transformer: FlowTransformer,
        r_s: Tensor,
        sampler: FlowMatchingEulerSampler | None = None,
        guidance: GuidanceScales | None = None,
        seed: int = 0,
        noise: NoiseSource | None = None,
        rope_offset: int | None = None,
    ) -> None:
        self.transformer = transformer
        self.cfg = transformer.cfg
        self.sampler = sampler or FlowMatchingEulerSampler()
        self.first_clip = FirstClipStep(transformer, self.sampler).to(r_s.device)
        self.block = BlockStep(transformer, self.sampler).to(r_s.device)
        self.r_s = to_model_units(r_s, self.cfg)
        self._generator = torch.Generator(device=r_s.device).manual_seed(seed)
        self._noise = noise
        self.rope_offset = rope_offset  # None: window-local positions; int: absolute positions + offset
        batch = r_s.shape[0]
        widths = {"avatar_audio": self.cfg.dim_a, "user_audio": self.cfg.dim_a, "user_motion": self.cfg.dim_w}
        self.state = StreamState(
            buffers={name: ConditionBuffer(r_s.new_zeros(batch, 0, widths[name])) for name in STREAMS}
        )
        self.state.guidance = guidance or GuidanceScales()

    # -- inputs ------------------------------------------------------------------------------------
    def push(
        self, avatar_audio: Tensor | None = None, user_audio: Tensor | None = None, user_motion: Tensor | None = None
    ) -> None:
        for name, frames in zip(STREAMS, (avatar_audio, user_audio, user_motion)):
            if frames is None:
                continue
            buf = self.state.buffers[name]
            if buf.ended:
                raise RuntimeError(f"{name} stream already ended")
            frames = frames if frames.dim() == 3 else frames[None]
            if frames.shape[-1] != buf.frames.shape[-1]:
                raise ValueError(
                    f"{name} frames have width {frames.shape[-1]}, the model expects {buf.frames.shape[-1]} "
                    f"(dim_a = {self.cfg.dim_a} for audio features, dim_w = {self.cfg.dim_w} for motion)"
                )
            buf.append(to_model_units(frames, self.cfg) if name == "user_motion" else frames)

    def end(self, *names: str) -> None:
        """Mark streams as ended (all when none given); the session length becomes known once
        both audio streams have ended: T = max(avatar, user audio frames)."""
        for name in names or STREAMS:
            self.state.buffers[name].ended = True
        audio = [self.state.buffers[n] for n in ("avatar_audio", "user_audio")]
        if all(b.ended for b in audio):
            self.state.total_frames = max(b.end for b in audio)

    def set_guidance(self, guidance: GuidanceScales) -> None:
        """Guidance for the blocks computed from now on."""
        self.state.guidance = guidance

    # -- outputs -----------------------------------------------------------------------------------
    def pull(self) -> list[LatentBlock]:
        """Compute every block whose condition windows are complete."""
        blocks = []
        while (block := self._try_step()) is not None:
            blocks.append(block)
        return blocks

    def next_block(self) -> LatentBlock | None:
        """Compute the next block if its condition windows are complete (None otherwise, or at
        the end), so a caller can change the guidance between blocks."""
        return self._try_step()

    @property
    def next_stop(self) -> int:
        """The frame the next block ends before (its condition windows reach up to there)."""
        t = self.state.next_frame
        return self.cfg.clip_frames if t == 0 else t + self.cfg.block_frames

    def _draw_noise(self, frames: int) -> Tensor:
        shape = (self.r_s.shape[0], frames, self.cfg.dim_w)
        if self._noise is not None:
            return self._noise(shape).to(self.r_s)
        return torch.randn(shape, generator=self._generator, device=self.r_s.device, dtype=self.r_s.dtype)

    def _windows(self, first: int, stop: int) -> list[Tensor]:
        return [self.state.buffers[name].window(first, stop) for name in STREAMS]

    @torch.no_grad()
    def _try_step(self) -> LatentBlock | None:
        st, cfg = self.state, self.cfg
        t = st.next_frame
        if st.total_frames is not None and t >= st.total_frames:
            return None
        first_clip = t == 0
        stop = self.next_stop
        if not all(st.buffers[n].covers(stop) for n in STREAMS):
            return None
        guidance = st.guidance.as_tensor().to(self.r_s.device)
        if first_clip:
            if self.rope_offset is not None:
                self.first_clip.set_rope_origin(self.rope_offset)
            noise = self._draw_noise(cfg.clip_frames)
            latents, st.self_k, st.self_v, st.cross_k, st.cross_v = self.first_clip(
                noise, *self._windows(0, stop), self.r_s, guidance
            )
            st.context = latents[:, -cfg.context_frames :]
        else:
            if self.rope_offset is not None:
                self.block.set_rope_origin(self.rope_offset + t - cfg.context_frames - cfg.self_cache_len)
            noise = self._draw_noise(cfg.block_frames)
            latents, st.self_k, st.self_v, st.cross_k, st.cross_v = self.block(
                noise,
                st.context,
                *self._windows(t - cfg.context_frames, stop),
                self.r_s,
                st.self_k,
                st.self_v,
                st.cross_k,
                st.cross_v,
                guidance,
            )
            st.context = torch.cat((st.context, latents), dim=1)[:, -cfg.context_frames :]  # blocks may be < C frames
        st.next_frame = stop
        for buf in st.buffers.values():
            buf.drop_before(stop - cfg.context_frames)
        keep = latents.shape[1] if st.total_frames is None else min(stop, st.total_frames) - t
        return LatentBlock(t, from_model_units(latents[:, :keep], cfg))

    # -- persistence -------------------------------------------------------------------------------
    def save_state(self, path: str | Path) -> None:
        self.state.rng_state = self._generator.get_state()
        self.state.save(path)

    def load_state(self, path: str | Path) -> None:
        self.state = StreamState.load(path)
        if self.state.rng_state is not None:
            self._generator.set_state(self.state.rng_state)


def generate(stream: MotionStream, avatar_audio: Tensor, user_audio: Tensor, user_motion: Tensor) -> Tensor:
    """One-shot sampling: push everything, end every stream, pull to the end.

    A/U [B, T, 512] (equal T, as the offline audio encoder produces), R [B, N, 512] -> [B, T, 512].
    """
    stream.push(avatar_audio, user_audio, user_motion)
    stream.end()
    blocks = stream.pull()
    return torch.cat([b.latents for b in blocks], dim=1)
