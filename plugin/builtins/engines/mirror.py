"""Built-in plugin ``mirror``: the ``mirror`` motion engine — your own face drives the avatar.

`MirrorEngine` implements the `MotionEngine` protocol of `avatarforcing.plugin.api.types`
without a model: `extract` reads the 13 face parameters of each ``InputTick.avatar_frames``
frame (the local user's face, ``[sources.avatar_video]``: a webcam, a video file) with
`FaceParamsExtractor` (One-Euro filtered), and `generate` returns one 1-frame `MotionBlock` per
frame whose `latents` are ``float32 [1, 13]`` *denormalized* parameters of `MOTION_SPACE`,
clipped to their ranges — the same contract as the ``default`` engine, so ``puppet`` (and
``portrait``, given a portrait) draw them. Blocks of one frame add at most one frame (40 ms) of
latency.

A frame without a face, or no avatar video at all, lets the face drift back to neutral: an
exponential decay towards zeros with a time constant of a third of ``neutral_after_s``, exactly
neutral once ``neutral_after_s`` passed without a face — never a frozen grimace. When the face
comes back, the parameters follow it again at once.

Audio plays no part (the avatar's audio still reaches the sinks), and so do the user's audio and
video and the guidance scales.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import (
    FACE_PARAMS_SPACE,
    EngineSpec,
    InputTick,
    MotionBlock,
    OptionSpec,
    SessionInfo,
)
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME
from avatarforcing.schemas.motion_space import MOTION_SPACE

ENGINE_NAME = "mirror"
WARM_UP_SIZE = 256  # side of the blank image FaceMesh is warmed up on


@dataclass
class MirrorFeatures:
    """The face of each frame of one tick: `params[i]` is ``float32 [13]`` denormalized
    parameters of frame ``first_frame + i``, or ``None`` where no face was found (or no image
    was given); `extract_ms`: time spent tracking."""

    first_frame: int
    params: list[np.ndarray | None]
    extract_ms: float = 0.0


@dataclass
class NeutralDecay:
    """The motion state between faces: the last parameters, pulled towards neutral (zeros) while
    no face is seen.

    `update(params)` returns the parameters of the next frame: a face's own parameters, or —
    without one — the previous output times ``exp(-dt / tau)`` with ``tau = neutral_after_s / 3``
    (95 % of the way to neutral after `neutral_after_s`), and exactly zeros once
    `neutral_after_s` passed since the last face. `dt` is one frame (``1 / fps``).
    """

    neutral_after_s: float = 1.0
    fps: float = float(FRAME_RATE)
    _value: np.ndarray = field(default_factory=MOTION_SPACE.neutral)
    _without_face_s: float = math.inf  # no face yet: neutral

    def reset(self) -> None:
        """Neutral, as before the first face."""
        self._value = MOTION_SPACE.neutral()
        self._without_face_s = math.inf

    def update(self, params: np.ndarray | None) -> np.ndarray:
        """Parameters ``float32 [13]`` for one frame given its face (``None``: no face)."""
        if params is not None:
            self._value = np.asarray(params, np.float32).copy()
            self._without_face_s = 0.0
            return self._value.copy()
        dt = 1.0 / self.fps
        self._without_face_s += dt
        if self._without_face_s >= self.neutral_after_s - 1e-9:
            self._value = MOTION_SPACE.neutral()
        else:
            self._value = (self._value * math.exp(-dt * 3.0 / self.neutral_after_s)).astype(np.float32)
        return self._value.copy()


class MirrorEngine:
    """The ``mirror`` engine (see the module docstring). `neutral_after_s`: seconds without a
    face after which the avatar is exactly neutral (the decay's time constant is a third of it);
    `smoothing`: One-Euro filter the tracked parameters; `min_confidence`: FaceMesh's detection
    and tracking threshold."""

    fps = FRAME_RATE
    sample_rate = SAMPLE_RATE
    first_block_frames = 1
    block_frames = 1

    def __init__(self, neutral_after_s: float = 1.0, smoothing: bool = True, min_confidence: float = 0.5) -> None:
        self._smoothing = smoothing
        self._min_confidence = min_confidence
        self._decay = NeutralDecay(neutral_after_s, float(FRAME_RATE))
        self._faces = None
        self._blocks = 0
        # the last image and its parameters: a camera slower than 25 fps repeats its frame, which
        # is then neither tracked again nor fed twice to the filter
        self._last_image: np.ndarray | None = None
        self._last_params: np.ndarray | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self, session: SessionInfo) -> None:
        """Build the face tracker (raises `FaceParamsUnavailable` saying how to install it)."""
        from avatarforcing.integrations.face_params import FaceParamsExtractor

        self._faces = FaceParamsExtractor(
            filter=self._smoothing, fps=float(FRAME_RATE), min_confidence=self._min_confidence
        )
        self._fresh()

    def _fresh(self) -> None:
        """Forget every frame seen: neutral face, filter and frame clock reset, block 0 next."""
        if self._faces is not None:
            self._faces.reset()
        self._decay.reset()
        self._blocks = 0
        self._last_image = self._last_params = None

    def warm_up(self) -> list[MotionBlock]:
        """Run FaceMesh once (its first frame is slow), then start afresh; returns one neutral
        1-frame block for the session to show until the first live frame."""
        blank = np.full((WARM_UP_SIZE, WARM_UP_SIZE, 3), 128, np.uint8)
        silence = np.zeros(SAMPLES_PER_FRAME, np.float32)
        tick = InputTick(0, 1, silence, silence, [None], avatar_frames=[blank])
        blocks = self.generate(self.extract(tick))
        self._fresh()
        return blocks

    def close(self) -> None:
        """Free the face tracker (mediapipe's graph); safe to call twice."""
        if self._faces is not None:
            self._faces.close()
            self._faces = None

    # -- features thread -----------------------------------------------------------------------
    def _track(self, image: np.ndarray | None, frame: int) -> np.ndarray | None:
        """Filtered parameters of the face in `image` (session frame `frame`), or None."""
        if image is None:  # no video: like a lost face, the filter starts afresh with the next one
            self._faces.reset()
            self._last_image = self._last_params = None
            return None
        if image is self._last_image:
            return self._last_params
        params = self._faces.extract(image, frame / float(FRAME_RATE))
        self._last_image, self._last_params = image, params
        return params

    def extract(self, tick: InputTick) -> MirrorFeatures:
        """The face parameters of each of the tick's `avatar_frames` (None: no face)."""
        started = time.perf_counter()
        frames = list(tick.avatar_frames or [])
        params = [
            self._track(frames[i] if i < len(frames) else None, tick.first_frame + i) for i in range(tick.num_frames)
        ]
        return MirrorFeatures(tick.first_frame, params, (time.perf_counter() - started) * 1000.0)

    # -- generator thread ----------------------------------------------------------------------
    def set_guidance(self, avatar_scale: float, user_scale: float) -> None:
        """Nothing to guide: the face is copied, not generated."""

    def generate(self, features: MirrorFeatures) -> list[MotionBlock]:
        """One 1-frame block per frame of `features`: the face, or the decay towards neutral."""
        blocks = []
        for i, params in enumerate(features.params):
            motion = MOTION_SPACE.clip(self._decay.update(params))[None, :]
            blocks.append(
                MotionBlock(
                    index=self._blocks,
                    first_frame=features.first_frame + i,
                    num_frames=1,
                    latents=motion.astype(np.float32),
                    metadata={
                        "engine": ENGINE_NAME,
                        "face": params is not None,
                        "compute_ms": features.extract_ms / max(1, len(features.params)),
                    },
                )
            )
            self._blocks += 1
        return blocks

    def finish(self) -> list[MotionBlock]:
        """Every frame was emitted as it came: nothing is pending."""
        return []


@hookimpl
def register_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=ENGINE_NAME,
            description="your own face drives the avatar: [sources.avatar_video] -> 13 face parameters, 1-frame blocks",
            factory=MirrorEngine,
            options=(
                OptionSpec(
                    "neutral_after_s",
                    float,
                    1.0,
                    "seconds without a face until the avatar is neutral (decay time constant: a third of it)",
                    minimum=0.0,
                    maximum=60.0,
                ),
                OptionSpec("smoothing", bool, True, "One-Euro filter the tracked parameters"),
                OptionSpec(
                    "min_confidence", float, 0.5, "face detection and tracking threshold", minimum=0.05, maximum=0.95
                ),
            ),
            default_renderer="puppet",
            motion_space=FACE_PARAMS_SPACE,
        )
    ]
