"""Offline render: portrait + avatar audio + user video (+ user audio) -> an mp4, through the
streaming engine, exactly as a live session would drive it.

Steps (`prepare_inputs`, then `render_video`):

1. Audio: both tracks decoded to 16 kHz mono float32 (`integrations.media.load_audio`); the
   user audio defaults to the user video's own track (silence when it has none).
   ``T = ceil(max(avatar samples, user samples) * 25 / 16000)`` frames — the official length.
2. Portrait: face crop as the official preprocessing (mediapipe detector), or a
   centre-square crop (``face_crop=False``, for inputs that are already face-centred), resized
   to the model's S×S.
3. User video: one crop for the whole clip from the face boxes averaged over every frame (spec
   one square for the clip), or a centre square; frames resampled to 25 fps (nearest earlier frame) and cropped
   lazily. A video shorter than T frames ends its stream early and the engine repeats its last
   frame (official padding); frames past T are not decoded.
4. Streaming: both audio tracks are padded to ``T * 640`` samples by repeating their last sample
   (official padding) and pushed 10 frames (6400 samples) at a time together with the next 10
   user frames into an `AvatarPipeline` (streaming audio features, first 50-frame clip, then
   10-frame blocks); every block is pulled as soon as it is computable.
5. Each block fires ``block_generated``, goes through the session's renderer plugin, and each
   frame through ``filter_frame``/``frame_rendered`` (`SessionEvents`), then into an H.264 mp4
   at 25 fps with the avatar audio muxed (`integrations.media.VideoWriter`). Exactly T frames.
   The file is written under a temporary name and renamed when complete.

`stream_motion` (step 4) is the part a live session reuses with live sources.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avatarforcing.plugin.api.errors import CommandError, PluginError
from avatarforcing.plugin.api.types import Frame, MotionBlock, SessionInfo
from avatarforcing.plugin.events import SessionEvents
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from avatarforcing.engine.official.model import AvatarForcingModel
    from avatarforcing.engine.official.pipeline import AvatarPipeline, PipelineConfig
    from avatarforcing.plugin.app.config import AppConfig
    from avatarforcing.plugin.host import PluginHost

CHUNK_FRAMES = 10  # what a live session pushes per step: one generator block
FIRST_CLIP_FRAMES = 50
BLOCK_FRAMES = 10


@dataclass(frozen=True)
class RenderInputs:
    """The files of an offline render. `user_audio` ``None``: the user video's own track.
    `face_crop` False: centre-square crops instead of face detection."""

    portrait: Path
    avatar_audio: Path
    user_video: Path
    user_audio: Path | None = None
    face_crop: bool = True

    def check_files(self) -> None:
        """`CommandError` (exit 2) naming the first input file that does not exist."""
        named = [
            ("--portrait", self.portrait),
            ("--avatar-audio", self.avatar_audio),
            ("--user-video", self.user_video),
            ("--user-audio", self.user_audio),
        ]
        for option, path in named:
            if path is None:
                continue
            if not Path(path).exists():
                raise CommandError(f"{option}: file not found: {path}", exit_code=2)
            if not Path(path).is_file():
                raise CommandError(f"{option}: not a file: {path}", exit_code=2)


@dataclass
class PreparedInputs:
    """Inputs ready for the engine: `portrait` ``[S, S, 3]`` uint8; audio float32 16 kHz mono;
    `user_frames` a lazy iterator of ``[S, S, 3]`` uint8 crops at 25 fps; `total_frames` T;
    `notes`: one-line remarks for the user (e.g. "no audio track in the user video")."""

    portrait: np.ndarray
    avatar_audio: np.ndarray
    user_audio: np.ndarray
    user_frames: Iterator[np.ndarray]
    total_frames: int
    portrait_path: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Stop decoding the user video (closes the file)."""
        close = getattr(self.user_frames, "close", None)
        if close:
            close()


@dataclass
class RenderResult:
    """What a render produced: `frames` written (== T), `blocks` generated, `duration_s` of
    the video, `wall_s` spent, `stats` as given to ``session_stopped``."""

    output: Path
    frames: int
    blocks: int
    duration_s: float
    wall_s: float
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def frame_count(avatar_samples: int, user_samples: int) -> int:
    """T = ceil(max(avatar, user samples) * 25 / 16000) (the official length)."""
    return math.ceil(max(avatar_samples, user_samples) * FRAME_RATE / SAMPLE_RATE)


def block_count(total_frames: int) -> int:
    """Blocks the engine emits for T frames: the first clip, then one per 10 frames."""
    if total_frames <= 0:
        return 0
    return 1 + max(0, math.ceil((total_frames - FIRST_CLIP_FRAMES) / BLOCK_FRAMES))


def pad_audio(samples: np.ndarray, length: int) -> np.ndarray:
    """Right-pad 1-D float32 `samples` to `length` by repeating the last sample (zeros when
    empty); longer input is returned unchanged."""
    if len(samples) >= length:
        return samples
    fill = samples[-1] if len(samples) else np.float32(0.0)
    return np.concatenate([samples, np.full(length - len(samples), fill, np.float32)])


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """The centred ``min(H, W)`` square of an RGB uint8 image, resized to ``[size, size, 3]``
    (same interpolation rule as the face crop)."""
    from avatarforcing.integrations.face_crop import CropSquare, apply_crop, resize_interpolation

    height, width = image.shape[:2]
    side = min(height, width)
    square = CropSquare(x=(width - side) // 2, y=(height - side) // 2, side=side)
    return apply_crop(image, square, size, resize_interpolation(height))


def frames_at_rate(frames: Iterable[tuple[float, np.ndarray]], fps: float = FRAME_RATE) -> Iterator[np.ndarray]:
    """Resample ``(pts seconds, image)`` frames to `fps` by nearest frame: output frame k (time
    k/fps from the first pts) is the latest input frame with ``pts < (k + 0.5) / fps``, for
    every k whose time lies within the clip (the last frame lasts as long as the gap before
    it). Frames are repeated or dropped, never blended; a 25 fps input passes through
    unchanged, even with jittery timestamps."""
    step = 1.0 / fps
    tick = 0
    held: np.ndarray | None = None
    first: float | None = None
    previous = last = 0.0
    for pts, image in frames:
        first = pts if first is None else first
        t = pts - first
        while held is not None and t >= (tick + 0.5) * step - 1e-9:
            yield held
            tick += 1
        held, previous, last = image, last, t
    if held is None:
        return
    end = last + (last - previous if last > previous else step)
    while (tick + 0.5) * step < end - 1e-9:
        yield held
        tick += 1


def _user_audio(inputs: RenderInputs, notes: list[str]) -> tuple[np.ndarray, str]:
    from avatarforcing.integrations.media import load_audio, video_info

    if inputs.user_audio is not None:
        return load_audio(inputs.user_audio, SAMPLE_RATE), "audio-file"
    if not video_info(inputs.user_video).has_audio:
        notes.append(f"no audio track in {inputs.user_video}: the user audio is silence (pass --user-audio)")
        return np.zeros(0, np.float32), "silence"
    return load_audio(inputs.user_video, SAMPLE_RATE), "audio-file"


def _crop_portrait(inputs: RenderInputs, size: int) -> np.ndarray:
    from avatarforcing.integrations.face_crop import crop_portrait_file, load_image_rgb

    if inputs.face_crop:
        crop, _ = crop_portrait_file(inputs.portrait, size)
        return crop
    return centre_square(load_image_rgb(inputs.portrait), size)


def _user_frames(inputs: RenderInputs, size: int) -> Iterator[np.ndarray]:
    """Plan the crop now (so a missing face fails before any heavy work), crop lazily."""
    from avatarforcing.integrations.face_crop import apply_crop, plan_video_crop
    from avatarforcing.integrations.media import iter_video_frames

    def timed() -> Iterator[tuple[float, np.ndarray]]:
        return ((pts, rgb) for _, pts, rgb in iter_video_frames(inputs.user_video))

    if inputs.face_crop:
        plan = plan_video_crop((rgb for _, rgb in timed()), source=str(inputs.user_video))
        return (apply_crop(rgb, plan.square, size, plan.interpolation) for rgb in frames_at_rate(timed()))
    return (centre_square(rgb, size) for rgb in frames_at_rate(timed()))


def prepare_inputs(inputs: RenderInputs, size: int) -> PreparedInputs:
    """Decode the audio, crop the portrait, plan the user-video crop (see the module
    docstring). Raises `CommandError` naming the file for missing files, undecodable media,
    no audio at all, or no face (exit 1; exit 2 for a missing file)."""
    from avatarforcing.integrations.face_detection import FaceDetectorUnavailable, NoFaceError
    from avatarforcing.integrations.media import MediaError, load_audio

    inputs.check_files()
    notes: list[str] = []
    try:
        avatar_audio = load_audio(inputs.avatar_audio, SAMPLE_RATE)
        user_audio, user_audio_source = _user_audio(inputs, notes)
        total = frame_count(len(avatar_audio), len(user_audio))
        if total == 0:
            raise CommandError(f"no audio samples in {inputs.avatar_audio} nor in the user audio: nothing to render")
        portrait = _crop_portrait(inputs, size)
        frames = _user_frames(inputs, size)
    except NoFaceError as error:
        raise CommandError(
            f"{error}; use a picture/video with a visible face, or --no-face-crop for inputs that are already face-centred"
        ) from error
    except FaceDetectorUnavailable as error:
        raise CommandError(
            f"face detection unavailable ({error}); install avatarforcing[face] or use --no-face-crop"
        ) from error
    except (MediaError, FileNotFoundError) as error:
        raise CommandError(str(error)) from error
    except ValueError as error:  # undecodable image, video without frames
        raise CommandError(str(error)) from error
    return PreparedInputs(
        portrait=portrait,
        avatar_audio=avatar_audio,
        user_audio=user_audio,
        user_frames=frames,
        total_frames=total,
        portrait_path=str(inputs.portrait),
        sources={"avatar_audio": "audio-file", "user_audio": user_audio_source, "user_video": "video-file"},
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamedBlock:
    """A block from the engine: latents ``[n, 512]`` of frames ``start .. start + n - 1`` and
    the seconds the ``pull()`` that produced it took."""

    start: int
    latents: Any
    pull_s: float


def stream_motion(
    pipeline: AvatarPipeline,
    avatar_audio: np.ndarray,
    user_audio: np.ndarray,
    user_frames: Iterator[np.ndarray],
    total_frames: int,
    *,
    chunk_frames: int = CHUNK_FRAMES,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Iterator[StreamedBlock]:
    """Drive `pipeline` like a live session: per chunk of `chunk_frames` frames push
    ``chunk_frames * 640`` samples of each audio track (both padded to ``total_frames * 640``)
    and the next user frames (``[S, S, 3]`` uint8), then yield every block that became
    computable. When `user_frames` runs dry its stream ends (the engine repeats its last
    frame). After the last chunk the inputs end and the remaining blocks come out; the blocks
    cover exactly frames ``0 .. total_frames - 1``. `on_chunk(frames pushed, total)` after each
    push."""
    import torch

    from avatarforcing.engine.official.pipeline import images_to_model

    length = total_frames * SAMPLES_PER_FRAME
    avatar = pad_audio(np.asarray(avatar_audio, np.float32), length)[:length]
    user = pad_audio(np.asarray(user_audio, np.float32), length)[:length]
    user_ended = False

    def pulled() -> Iterator[StreamedBlock]:
        started = time.perf_counter()
        blocks = pipeline.pull()
        elapsed = time.perf_counter() - started
        for block in blocks:
            yield StreamedBlock(block.start, block.latents[0], elapsed / len(blocks))

    for start in range(0, total_frames, chunk_frames):
        stop = min(start + chunk_frames, total_frames)
        samples = slice(start * SAMPLES_PER_FRAME, stop * SAMPLES_PER_FRAME)
        pipeline.push_avatar_audio(avatar[samples])
        pipeline.push_user_audio(user[samples])
        if not user_ended:
            chunk = [frame for _, frame in zip(range(stop - start), user_frames)]
            if chunk:
                with torch.no_grad():
                    pipeline.push_user_frames(images_to_model(np.stack(chunk)))
            if len(chunk) < stop - start:
                pipeline.motion.end("user_motion")
                user_ended = True
        if on_chunk:
            on_chunk(stop, total_frames)
        yield from pulled()
    pipeline.end()
    yield from pulled()


# --------------------------------------------------------------------------------------------
# The render
# --------------------------------------------------------------------------------------------
def _partial_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def _check_frames(renderer_name: str, block: MotionBlock, frames: Any) -> list[Frame]:
    frames = list(frames)
    if len(frames) != block.num_frames:
        raise PluginError(
            f"renderer {renderer_name!r} returned {len(frames)} frames for block {block.index} "
            f"({block.num_frames} expected)"
        )
    for frame in frames:
        if not isinstance(frame, Frame):
            raise PluginError(f"renderer {renderer_name!r} returned {type(frame).__name__}, expected Frame")
    return frames


def render_video(
    prepared: PreparedInputs,
    output: Path,
    model: AvatarForcingModel,
    host: PluginHost,
    config: AppConfig,
    pipeline_config: PipelineConfig,
    *,
    on_block: Callable[[int, int], None] | None = None,
) -> RenderResult:
    """Render `prepared` to `output` (mp4) with `model` through the streaming engine, the
    renderer ``[render] use`` of `config` (created by `host` with its options) and the
    session hooks of `host`. `on_block(blocks done, blocks total)` after each block.

    Returns the `RenderResult`; `session_stopped` sees ``stats`` with ``frames``, ``blocks``,
    ``error`` (``None`` or one line), ``output``, ``wall_s``. On failure the partial file is
    removed and the error propagates."""
    from avatarforcing.engine.official.pipeline import AvatarPipeline, images_to_model
    from avatarforcing.integrations.media import VideoWriter

    output = Path(output)
    if not output.parent.is_dir():
        raise CommandError(f"--out: folder does not exist: {output.parent}", exit_code=2)
    started = time.perf_counter()
    total = prepared.total_frames
    total_blocks = block_count(total)
    renderer = host.create_renderer(config)
    pipeline = AvatarPipeline(model, images_to_model(prepared.portrait), pipeline_config)
    size = model.cfg.input_size
    session = SessionInfo(
        session_id=uuid.uuid4().hex,
        config=config,
        fps=FRAME_RATE,
        sample_rate=SAMPLE_RATE,
        frame_size=(size, size),
        portrait_path=prepared.portrait_path,
        portrait=prepared.portrait,
        sources=dict(prepared.sources),
        renderer=config.render.use,
        sinks=(),
        engine=pipeline,
    )
    events = SessionEvents(host.pm)
    partial = _partial_path(output)
    writer: VideoWriter | None = None
    frames_written = blocks_done = 0
    error: BaseException | None = None
    stats: dict[str, Any] = {}
    hooks_started = False
    try:
        renderer.open(session)
        try:
            events.started(session)
            hooks_started = True
            writer = VideoWriter(partial, FRAME_RATE, audio_sample_rate=SAMPLE_RATE)
            writer.write_audio(prepared.avatar_audio)
            for streamed in stream_motion(
                pipeline, prepared.avatar_audio, prepared.user_audio, prepared.user_frames, total
            ):
                block = MotionBlock(
                    index=blocks_done,
                    first_frame=streamed.start,
                    num_frames=int(streamed.latents.shape[0]),
                    latents=streamed.latents,
                    metadata={"pull_s": round(streamed.pull_s, 6)},
                )
                events.block(session, block)
                for frame in _check_frames(config.render.use, block, renderer.render(block)):
                    frame = events.frame(session, frame)
                    image = frame.image[..., :3] if frame.image.shape[-1] == 4 else frame.image
                    writer.write_frame(np.ascontiguousarray(image))
                    frames_written += 1
                blocks_done += 1
                if on_block:
                    on_block(blocks_done, total_blocks)
            if frames_written != total:
                raise PluginError(f"rendered {frames_written} frames, expected {total}")
            writer.close()
            os.replace(partial, output)
        finally:
            renderer.close()
    except BaseException as caught:
        error = caught
        raise
    finally:
        prepared.close()
        if writer is not None and error is not None:
            try:
                writer.close()
            except Exception:  # the original error matters, not the half-written file
                pass
        if error is not None:
            partial.unlink(missing_ok=True)
        wall = time.perf_counter() - started
        stats.update(
            {
                "frames": frames_written,
                "blocks": blocks_done,
                "error": None if error is None else (f"{type(error).__name__}: {error}".splitlines() or [""])[0],
                "output": str(output),
                "wall_s": round(wall, 3),
                "video_s": frames_written / FRAME_RATE,
            }
        )
        if hooks_started:  # every session that started hears that it stopped
            events.stopped(session, stats)
    return RenderResult(output, frames_written, blocks_done, frames_written / FRAME_RATE, wall, stats)


__all__ = [
    "PreparedInputs",
    "RenderInputs",
    "RenderResult",
    "StreamedBlock",
    "block_count",
    "centre_square",
    "frame_count",
    "frames_at_rate",
    "pad_audio",
    "prepare_inputs",
    "render_video",
    "stream_motion",
]
