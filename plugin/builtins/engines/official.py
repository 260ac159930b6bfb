"""Built-in plugin ``official_engine``: the Avatar Forcing model as a live `MotionEngine`.

`OfficialEngine` wraps `avatarforcing.engine.official.pipeline.AvatarPipeline`: `extract` (features
thread) crops the user's face with `FaceTracker` and computes the streaming audio features and
the user-motion latents (no face: the null condition); `generate` (generator thread) pushes
them into the motion stream and pulls every computable block. Blocks carry latents
``(num_frames, 512)`` for the ``motion-autoencoder`` renderer, which decodes them through
``session.engine.decode`` (this object). Weights: ``[engines.official] model`` (a spec as for
``render --model``: ``formula:fixture_small``, a directory; ``""`` = the weights directory).

Every per-block graph (generator, audio window, motion encoder, decoder) runs on the backend
`choose_live_backend` picks (`engine/export/live_backend.py`); `backend` names it and
`backend_graphs` the runner of each graph (both in the open log line and the session stats).
A fixed-shape motion-encoder graph takes N frames per call (one block, 10) while a tick
carries one frame by default, so on such a backend `extract` collects the user's frames and
encodes them N at a time: the block that needs them waits for the audio lookahead anyway
(frame t+9's features come at tick t+12), so no block comes out later, and no call encodes
nine padding frames for one real one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import EngineSpec, InputTick, MotionBlock, OptionSpec, SessionInfo
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME

log = logging.getLogger(__name__)
NAME = "official"


@dataclass
class OfficialFeatures:
    """Features of one tick: session frame indices, audio features and user motion tensors."""

    frames: list[int]
    avatar: Any
    user: Any
    motion: Any
    faces: int


class OfficialEngine:
    """See the module docstring. Settings from ``session.config.model``: nfe, a_cfg_scale,
    u_cfg_scale, seed, device, threads."""

    fps = FRAME_RATE
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str, face_tracking: bool, onnx_dir: str) -> None:
        self.model_spec = model
        self.face_tracking = face_tracking
        self.onnx_dir = onnx_dir
        self.first_block_frames = 50
        self.block_frames = 10
        self.backend = ""
        self.backend_graphs: dict[str, str] = {}
        self.pipeline: Any = None
        self._tracker: Any = None
        self._lock = threading.Lock()  # guards _frame_map and _unencoded
        self._frame_map: deque[int] = deque()  # session frame index of each pushed engine frame
        self._mapped_from = 0  # engine frame index of _frame_map[0]
        self._blocks = 0
        # user frames not yet encoded (fixed-N motion encoder only): per frame, a crop
        # [3, S, S] float32 in [-1, 1], or None for the null condition (no face)
        self._unencoded: deque[Any] = deque()

    def open(self, session: SessionInfo) -> None:
        import torch

        from avatarforcing.plugin.app.model_loading import load_model_from_spec

        settings = session.config.model
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self._settings = settings
        self.model, source = load_model_from_spec(self.model_spec or None, settings)
        cfg = self.model.cfg
        self.first_block_frames, self.block_frames = cfg.clip_frames, cfg.block_frames
        self._backend = self._choose_backend(settings)
        self.backend = self._backend.name
        self.backend_graphs = dict(self._backend.graphs)
        log.info(
            "engine official: %s; %s; %s",
            source.description,
            self._backend.choice.log_line(),
            self._backend.graphs_line(),
        )
        self._portrait = self._crop_portrait(session.portrait, cfg.input_size)
        self._new_pipeline()
        if self.face_tracking:
            from avatarforcing.integrations.face_tracking import FaceTracker

            self._tracker = FaceTracker(cfg.input_size)

    def _choose_backend(self, settings: Any):
        """The fastest usable backend for the per-block graphs (``[model] backend``; a requested
        one that cannot run is a `PluginError`), exporting the graphs on first use."""
        from pathlib import Path

        from avatarforcing.engine.export.graph_specs import ExportSettings
        from avatarforcing.engine.export.live_backend import BackendUnavailable, choose_live_backend
        from avatarforcing.plugin.app.paths import user_cache_dir

        self._export_settings = ExportSettings(nfe=settings.nfe)
        export_dir = Path(self.onnx_dir).expanduser() if self.onnx_dir else None
        try:
            return choose_live_backend(
                self.model,
                self._export_settings,
                settings.backend,
                user_cache_dir() / "avatarforcing" / "graphs",
                export_dir,
                log=log.info,
            )
        except BackendUnavailable as error:
            raise PluginError(f"engine {NAME!r}: {error}") from error

    def _crop_portrait(self, image: np.ndarray | None, size: int) -> np.ndarray:
        from avatarforcing.integrations.face_crop import centre_square, crop_portrait

        if image is None:
            raise ValueError("the official engine needs a portrait: set [session] portrait (--portrait IMG)")
        try:
            return crop_portrait(image, size)[0]
        except Exception as error:  # no face found: use the centre, as `render --no-face-crop`
            log.warning("portrait: %s; using its centre square", error)
            return centre_square(image, size)

    def _new_pipeline(self) -> None:
        from avatarforcing.engine.official.pipeline import AvatarPipeline, PipelineConfig, images_to_model
        from avatarforcing.engine.sampler import GuidanceScales

        s = self._settings
        config = PipelineConfig(nfe=s.nfe, guidance=GuidanceScales(s.a_cfg_scale, s.u_cfg_scale), seed=s.seed)
        self.pipeline = AvatarPipeline(self.model, images_to_model(self._portrait), config)
        self._accelerate(self.pipeline)
        with self._lock:
            self._frame_map.clear()
            self._mapped_from = 0
            self._unencoded.clear()
        self._blocks = 0

    def _accelerate(self, pipeline: Any) -> None:
        """Run the pipeline's graphs on the chosen backend (runners built once)."""
        from avatarforcing.engine.export.live_backend import accelerate_pipeline
        from avatarforcing.plugin.app.paths import user_cache_dir

        threads = self._settings.threads or None
        engines = user_cache_dir() / "avatarforcing" / "engines"
        accelerate_pipeline(pipeline, self.model, self._backend, self._export_settings, threads, engines, log=log.info)

    def warm_up(self) -> list[MotionBlock]:
        """The first clip on silence (its blocks are returned for a renderer warm-up), then a
        fresh stream."""
        silence = np.zeros(self.first_block_frames * SAMPLES_PER_FRAME, np.float32)
        tick = InputTick(0, self.first_block_frames, silence, silence, [None] * self.first_block_frames)
        blocks = self.generate(self.extract(tick)) + self.finish()
        self._new_pipeline()
        if self._tracker is not None:
            self._tracker.reset()
        return blocks

    def _crops(self, frames: list) -> tuple[Any, int]:
        from avatarforcing.engine.official.pipeline import images_to_model

        if self._tracker is None or all(f is None for f in frames):
            return None, 0
        crops = []
        for frame in frames:
            result = self._tracker.update(frame) if frame is not None else None
            if result is None or not result.has_face:
                return None, 0  # a tick is all face or all null (one condition per tick)
            crops.append(result.crop)
        return images_to_model(np.stack(crops)), len(crops)

    def extract(self, tick: InputTick) -> OfficialFeatures:
        crops, faces = self._crops(tick.user_frames)
        p = self.pipeline
        return OfficialFeatures(
            frames=list(range(tick.first_frame, tick.first_frame + tick.num_frames)),
            avatar=p.avatar_audio_features(tick.avatar_audio),
            user=p.user_audio_features(tick.user_audio),
            motion=self._user_motion(crops, tick.num_frames),
            faces=faces,
        )

    def _user_motion(self, crops: Any, count: int) -> Any:
        """Motion latents [n, 512] of this tick's user frames (`crops` [count, 3, S, S], or None:
        no face). With a fixed-N motion encoder, the frames of the ticks since the last call
        until N are collected (module docstring): n is then 0 or a multiple of N."""
        p = self.pipeline
        per_call = p.motion_frames_per_call
        if not per_call or per_call == 1:
            return p.user_motion(crops, count)
        with self._lock:
            self._unencoded.extend(list(crops) if crops is not None else [None] * count)
            ready = len(self._unencoded) // per_call * per_call
            frames = [self._unencoded.popleft() for _ in range(ready)]
        return self._encode_frames(frames)

    def _encode_frames(self, frames: list) -> Any:
        """Motion latents [len(frames), 512]: the crops encoded together, zeros for None."""
        import torch

        p = self.pipeline
        latents = torch.zeros(len(frames), self.model.cfg.dim_w, device=p.device)
        faces = [k for k, crop in enumerate(frames) if crop is not None]
        if faces:
            latents[faces] = p.user_motion(torch.stack([frames[k] for k in faces]), len(faces))
        return latents

    def set_guidance(self, avatar_scale: float, user_scale: float) -> None:
        from avatarforcing.engine.sampler import GuidanceScales

        self.pipeline.set_guidance(GuidanceScales(avatar_scale, user_scale))

    def _convert(self, blocks) -> list[MotionBlock]:
        out = []
        for block in blocks:
            n = int(block.latents.shape[1])
            with self._lock:
                position = block.start - self._mapped_from
                first = self._frame_map[position] if 0 <= position < len(self._frame_map) else block.start
                keep = max(0, block.start - self._mapped_from - 200)
                for _ in range(min(keep, len(self._frame_map))):
                    self._frame_map.popleft()
                    self._mapped_from += 1
            out.append(MotionBlock(self._blocks, first, n, block.latents[0], {"engine_start": block.start}))
            self._blocks += 1
        return out

    def generate(self, features: OfficialFeatures) -> list[MotionBlock]:
        with self._lock:
            self._frame_map.extend(features.frames)
        self.pipeline.motion.push(avatar_audio=features.avatar, user_audio=features.user, user_motion=features.motion)
        return self._convert(self.pipeline.pull())

    def finish(self) -> list[MotionBlock]:
        with self._lock:
            frames = list(self._unencoded)
            self._unencoded.clear()
        avatar, user = self.pipeline.flush_audio_features()
        self.pipeline.motion.push(avatar_audio=avatar, user_audio=user, user_motion=self._encode_frames(frames))
        self.pipeline.motion.end()
        return self._convert(self.pipeline.pull())

    def decode(self, block):
        """For the ``motion-autoencoder`` renderer: frames of an engine block."""
        return self.pipeline.decode(block)

    def close(self) -> None:
        if self._tracker is not None:
            self._tracker.close()
            self._tracker = None


OFFICIAL = EngineSpec(
    name=NAME,
    description="the Avatar Forcing model (official weights, or formula weights for demos)",
    factory=OfficialEngine,
    options=(
        OptionSpec("model", str, "", 'model spec: a weights directory or formula:PRESET ("" = the weights directory)'),
        OptionSpec("face_tracking", bool, True, "track the user's face in the video (off: null user motion)"),
        OptionSpec(
            "onnx_dir",
            str,
            "",
            'ONNX exports of this model (`avatarforcing graphs export --out DIR`; "" = exported on first use '
            "into the per-user cache)",
        ),
    ),
    default_renderer="motion-autoencoder",
)


@hookimpl
def register_engines() -> list[EngineSpec]:
    return [OFFICIAL]
