"""The embedded default avatar as the ``default`` motion engine (renderer: ``puppet``).

`DefaultEngine` implements the `MotionEngine` protocol of `avatarforcing.plugin.api.types`:
`extract` turns an `InputTick` into streaming log-mel rows of both audios and the user's face
parameters (`FaceParamsExtractor`; no face or no video = the null condition, zeros), all in
the model's normalized units; `generate` pushes them into the model's `MotionStream` and
returns `MotionBlock`s whose `latents` are ``float32 [num_frames, 13]`` *denormalized* motion
parameters (`MOTION_SPACE`), passed through the causal output smoothing
(`avatarforcing.engine.embedded.smoothing`, option ``smoothing``) and clipped to their ranges.
First block 25 frames (1 s), then 4-frame (160 ms) blocks.

The generator's two graphs (first clip, block step) run on the backend `choose_live_backend`
picks from ``[model] backend``, as the official engine's do (`engine/export/live_backend.py`):
with ``auto`` ONNX Runtime on the CPU where it is installed (faster than eager PyTorch for this
model too, see docs/acceleration.md), the graphs exported on first use into the per-model cache
folder and reused on the next start; eager PyTorch otherwise. A requested backend that cannot
run is a `PluginError`. `backend` names the backend and `backend_graphs` the runner of each
graph (the open log line and the session stats show both).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatarforcing.plugin.api.errors import PluginError
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

ENGINE_NAME = "default"
log = logging.getLogger(__name__)


@dataclass
class DefaultFeatures:
    """Normalized condition frames of one tick: audio [n, 80 or 84] float32 (avatar, user; the model's audio rows) and user
    motion [n, 13] float32 (zeros where no face); `faces`: how many frames had a face."""

    first_frame: int
    avatar_audio: np.ndarray
    user_audio: np.ndarray
    user_motion: np.ndarray
    faces: int = 0


def _check_nfe(value: int) -> str | None:
    return "must be 0 ([model] nfe) or at least 3" if value in (1, 2) else None


def _check_weights(value: str) -> str | None:
    if not value:
        return None
    folder = Path(value)
    names = ("default_avatar.safetensors", "flow_transformer.safetensors")
    if not folder.is_dir() or not any((folder / n).is_file() for n in names):
        return f"not a folder with default_avatar.safetensors or flow_transformer.safetensors: {value!r}"
    return None


def load_embedded_model(weights: str = "", device: str = "cpu"):
    """The packaged default avatar, or the one in folder `weights` (shipped layout
    default_avatar.safetensors/.json, or a trainer checkpoint folder)."""
    from avatarforcing.engine.embedded.model import CONFIG_FILE, WEIGHTS_FILE, DefaultAvatarModel, load_default

    if not weights:
        return load_default(device)
    folder = Path(weights)
    if (folder / WEIGHTS_FILE).is_file():
        return DefaultAvatarModel.from_files(folder / WEIGHTS_FILE, folder / CONFIG_FILE, device)
    from avatarforcing.engine.checkpoint_format import load_flow_transformer

    transformer, info = load_flow_transformer(folder, device)
    return DefaultAvatarModel(transformer, info)


class DefaultEngine:
    """The default avatar's streaming engine (see the module docstring)."""

    fps = FRAME_RATE
    sample_rate = SAMPLE_RATE
    first_block_frames = 25
    block_frames = 4

    def __init__(self, nfe: int = 5, face_tracking: bool = True, weights: str = "", smoothing: bool = True) -> None:
        from avatarforcing.engine.embedded.smoothing import MotionSmoother, SmoothingConfig

        self._nfe_option = nfe
        self._face_tracking = face_tracking
        self._weights = weights
        self._smoother = MotionSmoother(SmoothingConfig(enabled=smoothing))
        self._lock = threading.Lock()
        self._model = None
        self._settings = None
        self._stream = None
        self._device = "cpu"
        self._faces = None
        self._avatar_audio = None
        self._user_audio = None
        self._blocks = 0
        self._ended = False
        self._guidance = None  # (avatar, user) set by set_guidance; survives warm_up's reset
        self._backend = None  # `LiveBackend` of the generator graphs, chosen at open
        self._threads: int | None = None
        self.backend = ""
        self.backend_graphs: dict[str, str] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self, session: SessionInfo) -> None:
        import torch

        from avatarforcing.engine.embedded.audio_conditions import StreamingAudioConditions
        from avatarforcing.engine.embedded.model import StreamSettings

        model_cfg = session.config.model
        self._device = "cpu" if model_cfg.device == "auto" else model_cfg.device
        if model_cfg.threads:
            torch.set_num_threads(model_cfg.threads)
        # a 1 M-parameter model gains nothing from a thread pool; `[model] threads` overrides
        self._threads = model_cfg.threads or 1
        self._model = load_embedded_model(self._weights, self._device)
        self._settings = StreamSettings(
            nfe=self._nfe_option or model_cfg.nfe,
            avatar_scale=model_cfg.a_cfg_scale,
            user_scale=model_cfg.u_cfg_scale,
            seed=model_cfg.seed,
        )
        self._backend = self._choose_backend(model_cfg.backend)
        self.backend = self._backend.name
        self.backend_graphs = dict(self._backend.graphs)
        log.info(
            "engine default: %s weights, nfe %d; %s; %s",
            self._weights or "packaged",
            self._settings.nfe,
            self._backend.choice.log_line(),
            self._backend.graphs_line(),
        )
        voicing = self._model.voicing_history
        self._avatar_audio, self._user_audio = StreamingAudioConditions(voicing), StreamingAudioConditions(voicing)
        if self._face_tracking:
            from avatarforcing.integrations.face_params import FaceParamsExtractor

            self._faces = FaceParamsExtractor()
        self._reset_stream()

    def _choose_backend(self, requested: str):
        """The `LiveBackend` of the generator graphs (``requested``: ``[model] backend``), the
        graphs exported into the per-model cache folder on first use; a requested backend that
        cannot run is a `PluginError`."""
        from avatarforcing.engine.export.live_backend import BackendUnavailable, choose_live_backend
        from avatarforcing.plugin.app.paths import user_cache_dir

        try:
            return choose_live_backend(
                self._model.transformer,
                self._export_settings(),
                requested,
                user_cache_dir() / "avatarforcing" / "graphs",
                log=log.info,
            )
        except BackendUnavailable as error:
            raise PluginError(f"engine {ENGINE_NAME!r}: {error}") from error

    def _export_settings(self):
        from avatarforcing.engine.export.graph_specs import ExportSettings

        return ExportSettings(nfe=self._settings.nfe)

    def _new_stream(self):
        """A fresh `MotionStream` of the model whose steps run on the chosen backend (the
        runners are built on the first call, then shared)."""
        from avatarforcing.engine.export.live_backend import accelerate_stream
        from avatarforcing.plugin.app.paths import user_cache_dir

        stream = self._model.stream(self._settings, device=self._device)
        engines = user_cache_dir() / "avatarforcing" / "engines"
        accelerate_stream(
            stream,
            self._model.transformer,
            self._backend,
            self._export_settings(),
            self._threads,
            engines,
            log=log.info,
        )
        return stream

    def _reset_stream(self) -> None:
        with self._lock:
            self._stream = self._new_stream()
            if self._guidance is not None:
                self._stream.set_guidance(self._guidance)
            self._smoother.reset()
            self._blocks = 0
            self._ended = False

    def warm_up(self) -> list[MotionBlock]:
        """Run the first clip and one block on silence (returned for a renderer warm-up), then
        start a fresh stream; and the face tracker once on a blank frame, so that its graph's
        first-run setup (40-110 ms here) is not paid by the first live tick."""
        from avatarforcing.engine.embedded.audio_conditions import audio_conditions

        frames = self.first_block_frames + self.block_frames
        rows = audio_conditions(np.zeros(frames * SAMPLES_PER_FRAME, np.float32), self._model.voicing_history)
        features = DefaultFeatures(0, rows, rows, np.zeros((frames, 13), np.float32))
        blocks = self.generate(features)
        self._reset_stream()
        if self._faces is not None:
            self._faces.extract(np.zeros((256, 256, 3), np.uint8))
            self._faces.reset()
        return blocks

    def close(self) -> None:
        if self._faces is not None:
            self._faces.close()
            self._faces = None
        self._stream = None
        self._model = None

    # -- features thread -----------------------------------------------------------------------
    def extract(self, tick: InputTick, user_params: list | None = None) -> DefaultFeatures:
        """`tick` -> normalized condition frames. `user_params`: the user's face parameters
        already extracted elsewhere (a remote client tracks the face itself), `num_frames`
        entries, each ``float32 [13]`` denormalized or ``None`` (no face); given, the user's
        frames in `tick` are not looked at."""
        from avatarforcing.schemas.motion_space import MOTION_SPACE

        expected = tick.num_frames * SAMPLES_PER_FRAME
        for name in ("avatar_audio", "user_audio"):
            samples = getattr(tick, name)
            if np.asarray(samples).shape != (expected,):
                raise ValueError(
                    f"InputTick.{name} must have shape ({expected},) for {tick.num_frames} frames, got {np.shape(samples)}"
                )
        avatar = self._avatar_audio.push(np.asarray(tick.avatar_audio, np.float32))
        user = self._user_audio.push(np.asarray(tick.user_audio, np.float32))
        motion = np.zeros((tick.num_frames, MOTION_SPACE.dim), np.float32)
        faces = 0
        frames = list(tick.user_frames) if tick.user_frames is not None else []
        for i in range(tick.num_frames):
            image = frames[i] if i < len(frames) else None
            params = None
            if user_params is not None:
                params = user_params[i] if i < len(user_params) else None
            elif image is not None and self._faces is not None:
                params = self._faces.extract(image)
            elif image is None and self._faces is not None:
                self._faces.reset()
            if params is not None:
                motion[i] = MOTION_SPACE.normalize(params)
                faces += 1
        return DefaultFeatures(tick.first_frame, avatar, user, motion, faces)

    # -- saving and resuming -------------------------------------------------------------------
    def save_state(self) -> bytes:
        """The stream's whole state as bytes (`EmbeddedStreamState`, about 0.4 MB): call between
        ticks (not while `extract`/`generate` run); `load_state` on a fresh engine opened with
        the same model and settings continues exactly where this one is. The face tracker's
        smoothing is not part of it (a resumed stream's tracker starts afresh)."""
        from avatarforcing.engine.embedded.stream_state import EmbeddedStreamState, stream_to_bytes

        with self._lock:
            return EmbeddedStreamState(
                stream=stream_to_bytes(self._stream),
                avatar_audio=self._avatar_audio.get_state(),
                user_audio=self._user_audio.get_state(),
                blocks=self._blocks,
                ended=self._ended,
                smoother=self._smoother.state(),
            ).to_bytes()

    def load_state(self, blob: bytes) -> None:
        """Resume from `save_state`'s bytes (after `open`; instead of `warm_up`'s fresh stream).
        A blob that is not a saved stream of this model raises ValueError."""
        from avatarforcing.engine.embedded.stream_state import EmbeddedStreamState, stream_from_bytes

        saved = EmbeddedStreamState.from_bytes(blob)
        with self._lock:
            stream = self._new_stream()
            stream_from_bytes(stream, saved.stream)
            self._avatar_audio.set_state(saved.avatar_audio)
            self._user_audio.set_state(saved.user_audio)
            self._stream, self._blocks, self._ended = stream, saved.blocks, saved.ended
            self._smoother.load_state(saved.smoother)
            if self._guidance is not None:  # a guidance set since wins over the saved one
                self._stream.set_guidance(self._guidance)
        if self._faces is not None:
            self._faces.reset()

    # -- generator thread ----------------------------------------------------------------------
    def set_guidance(self, avatar_scale: float, user_scale: float) -> None:
        from avatarforcing.engine.sampler import GuidanceScales

        with self._lock:
            self._guidance = GuidanceScales(float(avatar_scale), float(user_scale))
            if self._stream is not None:
                self._stream.set_guidance(self._guidance)

    def generate(self, features: DefaultFeatures) -> list[MotionBlock]:
        import torch

        with self._lock:
            start = time.perf_counter()
            self._stream.push(
                torch.from_numpy(features.avatar_audio),
                torch.from_numpy(features.user_audio),
                torch.from_numpy(features.user_motion),
            )
            return self._blocks_from(self._stream.pull(), start)

    def finish(self) -> list[MotionBlock]:
        with self._lock:
            if self._ended:
                return []
            self._ended = True
            start = time.perf_counter()
            self._stream.end()
            return self._blocks_from(self._stream.pull(), start)

    def _blocks_from(self, raw: list[Any], start: float) -> list[MotionBlock]:
        from avatarforcing.schemas.motion_space import MOTION_SPACE

        elapsed_ms = (time.perf_counter() - start) * 1000.0
        out = []
        for block in raw:
            shown = self._smoother(block.latents[0].cpu().numpy(), block.start)  # causal, frame by frame
            params = MOTION_SPACE.clip(MOTION_SPACE.denormalize(shown))
            out.append(
                MotionBlock(
                    index=self._blocks,
                    first_frame=block.start,
                    num_frames=params.shape[0],
                    latents=params,
                    metadata={"engine": ENGINE_NAME, "compute_ms": elapsed_ms / max(1, len(raw))},
                )
            )
            self._blocks += 1
        return out


@hookimpl
def register_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=ENGINE_NAME,
            description="embedded small avatar (13 face parameters, log-mel audio), real time on CPU",
            factory=DefaultEngine,
            options=(
                OptionSpec(
                    "nfe",
                    int,
                    5,
                    "sampler steps (nfe - 2 network evaluations per 4-frame block); 0 = [model] nfe",
                    minimum=0,
                    maximum=50,
                    check=_check_nfe,
                ),
                OptionSpec(
                    "face_tracking", bool, True, "track the user's face (off: the user-motion condition is always null)"
                ),
                OptionSpec(
                    "weights",
                    str,
                    "",
                    "folder with other weights (default: the ones shipped in the package)",
                    check=_check_weights,
                ),
                OptionSpec(
                    "smoothing",
                    bool,
                    True,
                    "smooth the generated motion (a causal One-Euro filter: pose hard, jaw lightly; "
                    "see docs/default_avatar.md)",
                ),
            ),
            default_renderer="puppet",
            motion_space=FACE_PARAMS_SPACE,
        )
    ]
