"""Dyadic conversation videos -> a training dataset (`avatarforcing data prepare`).

Input layouts (one conversation each):
- ``side-by-side``: one video whose left and right halves show the two parties. A stereo track
  gives each party its channel (left channel = left party). A mono track is split between the
  parties by `attribute_mono_speech`: per 40 ms frame, the share of each side is its mouth
  activity (moving standard deviation of the jaw opening over `MOUTH_WINDOW` frames) over the
  sum of both; with no mouth moving both get half. It cannot separate overlapping speech and
  hears laughter or chewing as speech: prefer stereo or two tracks.
- ``two-tracks``: two videos (party A, party B), each with its own audio.

Everything runs at 25 fps: video frames are resampled by nearest frame
(`avatarforcing.integrations.media.frames_at_rate`), audio is 16 kHz mono with 640 samples per
frame; a conversation has T = min(video frames, audio samples // 640) frames. Each
conversation gives two items, ``<id>-a`` (party A / left is the avatar) and ``<id>-b`` (the
reverse). Held-out conversations: the ``ceil(N * fraction)`` ones whose id has the smallest
SHA-256 (deterministic, independent of argument order).

Spaces (`DefaultSpace`, `OfficialSpace`):
- ``default``: audio `audio_conditions` in the packaged model's layout (log-mel, [T, 80]); motion = `FaceParamsExtractor` parameters in
  normalized units [T, 13] (no face -> zeros = neutral); reference = mean motion over the
  frames with a face.
- ``official``: audio = the engine's offline wav2vec2 features (`AudioEncoder`, whole-utterance
  normalisation, run in chunks of at most `UTTERANCE_CHUNK_FRAMES` frames) [T, 512]; motion =
  `encode_motion` of the tracked face crop (`FaceTracker`) [T, 512] (no face -> zeros);
  reference = motion of the first face crop (= the r_s the model computes for that crop as a
  portrait).
`avatar_energy` = RMS of the avatar's (attributed) 16 kHz audio per 40 ms frame.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME

LAYOUTS = ("side-by-side", "two-tracks")
MOUTH_WINDOW = 9  # frames (0.36 s) of jaw-opening history for the mouth activity
MOTION_BATCH = 32  # face crops per encode_motion call


class DataPrepareError(ValueError):
    """An input that cannot be prepared; the message names the file and what to change."""


# ----------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class Conversation:
    """One input conversation: `id` (item ids are ``id-a``/``id-b``), `layout`, its `videos`
    (one for side-by-side, party A then party B for two-tracks)."""

    id: str
    layout: str
    videos: tuple[Path, ...]

    @property
    def source(self) -> str:
        return " + ".join(str(v) for v in self.videos)


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "conversation"


def plan_conversations(videos: Sequence[str | Path], layout: str) -> list[Conversation]:
    """Group the VIDEO arguments into conversations, checking that every file exists, that
    two-track files come in pairs, and that conversation ids are unique."""
    if layout not in LAYOUTS:
        raise DataPrepareError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    paths = [Path(v).expanduser() for v in videos]
    if not paths:
        raise DataPrepareError("no VIDEO given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataPrepareError(f"video file not found: {', '.join(missing)}")
    if layout == "two-tracks":
        if len(paths) % 2:
            raise DataPrepareError(
                f"--layout two-tracks takes VIDEO files in pairs (party A, party B); got {len(paths)} files, "
                f"the last one ({paths[-1]}) has no partner"
            )
        groups = [tuple(paths[i : i + 2]) for i in range(0, len(paths), 2)]
        ids = [_safe_id(f"{a.stem}--{b.stem}") for a, b in groups]
    else:
        groups = [(p,) for p in paths]
        ids = [_safe_id(p.stem) for p in paths]
    seen: dict[str, int] = {}
    for conv_id in ids:
        seen[conv_id] = seen.get(conv_id, 0) + 1
    clashes = sorted(i for i, n in seen.items() if n > 1)
    if clashes:
        raise DataPrepareError(
            f"several conversations get the id {clashes[0]!r} (ids come from file names); rename the files"
        )
    return [Conversation(i, layout, g) for i, g in zip(ids, groups)]


def heldout_ids(ids: Sequence[str], fraction: float) -> set[str]:
    """The ``ceil(len(ids) * fraction)`` ids with the smallest SHA-256: a deterministic
    held-out set that does not depend on the order of the ids."""
    if not 0.0 <= fraction < 1.0:
        raise DataPrepareError(f"--heldout-fraction must be in [0, 1), got {fraction}")
    count = math.ceil(len(ids) * fraction)
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return set(ranked[:count])


# ------------------------------------------------------------------------------------- audio


def load_audio_channels(path: Path) -> np.ndarray:
    """Every channel of the first audio stream at 16 kHz: float32 [C, n] (C = 1 or 2).

    More than two channels are refused; a file without audio raises `DataPrepareError`."""
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise DataPrepareError(f"cannot open {path}: {error}") from error
    with container:
        if not container.streams.audio:
            raise DataPrepareError(
                f"{path} has no audio track; every party needs audio (two-tracks: each file its own)"
            )
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels
        if channels not in (1, 2):
            raise DataPrepareError(f"{path}: audio has {channels} channels; give a mono or stereo track")
        resampler = av.AudioResampler(format="fltp", layout="stereo" if channels == 2 else "mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None
                chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except av.FFmpegError as error:
            raise DataPrepareError(f"cannot decode the audio of {path}: {error}") from error
    if not chunks:
        return np.zeros((channels, 0), np.float32)
    return np.ascontiguousarray(np.concatenate(chunks, axis=1), dtype=np.float32)


def frame_rms(samples: np.ndarray, frames: int) -> np.ndarray:
    """RMS of each 640-sample (40 ms) frame of 16 kHz audio: float32 [frames]."""
    blocks = np.asarray(samples, np.float64)[: frames * SAMPLES_PER_FRAME].reshape(frames, SAMPLES_PER_FRAME)
    return np.sqrt((blocks**2).mean(axis=1)).astype(np.float32)


def mouth_activity(jaw: np.ndarray, found: np.ndarray, window: int = MOUTH_WINDOW) -> np.ndarray:
    """Moving standard deviation of the jaw opening [T] over `window` centred frames; 0 where
    no face was found."""
    jaw = np.where(found, jaw, 0.0).astype(np.float64)
    pad = window // 2
    padded = np.pad(jaw, pad, mode="edge")
    views = np.lib.stride_tricks.sliding_window_view(padded, window)[: len(jaw)]
    return np.where(found, views.std(axis=1), 0.0)


def attribute_mono_speech(
    samples: np.ndarray, activity_left: np.ndarray, activity_right: np.ndarray, eps: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split mono audio [>= T*640] between two parties by mouth activity [T] each.

    Returns ``(left samples, right samples, left share [T])``: per frame the left share is
    ``a_L / (a_L + a_R)`` (0.5 when neither mouth moves more than `eps`), smoothed over
    `MOUTH_WINDOW` frames and interpolated linearly between frame centres."""
    frames = len(activity_left)
    total = activity_left + activity_right
    share = np.where(total > eps, activity_left / np.maximum(total, eps), 0.5)
    kernel = np.ones(MOUTH_WINDOW) / MOUTH_WINDOW
    share = np.convolve(np.pad(share, MOUTH_WINDOW // 2, mode="edge"), kernel, mode="valid")[:frames]
    audio = np.asarray(samples, np.float32)[: frames * SAMPLES_PER_FRAME]
    centres = (np.arange(frames) + 0.5) * SAMPLES_PER_FRAME
    gain = np.interp(np.arange(len(audio)), centres, share).astype(np.float32)
    return audio * gain, audio * (1.0 - gain), share.astype(np.float32)


# -------------------------------------------------------------------------------------- video


def video_frames_25fps(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of `path` resampled to 25 fps (nearest frame)."""
    from avatarforcing.integrations.media import frames_at_rate, iter_video_frames

    return frames_at_rate(((pts, rgb) for _, pts, rgb in iter_video_frames(path)), FRAME_RATE)


@dataclass
class SideMotion:
    """What a side reader found: `motion` [T, dim_w] float32 (zeros without a face), `found`
    [T] bool, `reference` [dim_w], `jaw` [T] (jaw opening in [0, 1]; None when not tracked)."""

    motion: np.ndarray
    found: np.ndarray
    reference: np.ndarray
    jaw: np.ndarray | None


class DefaultSideReader:
    """Default-space motion of one party: `FaceParamsExtractor` per frame, normalized units."""

    def __init__(self) -> None:
        from avatarforcing.integrations.face_params import FaceParamsExtractor

        self._extractor = FaceParamsExtractor(fps=FRAME_RATE)
        self._rows: list[np.ndarray | None] = []

    def push(self, rgb: np.ndarray) -> None:
        self._rows.append(self._extractor.extract(np.ascontiguousarray(rgb)))

    def finish(self) -> SideMotion:
        from avatarforcing.schemas.motion_space import MOTION_SPACE

        self._extractor.close()
        found = np.array([r is not None for r in self._rows], bool)
        params = (
            np.stack([MOTION_SPACE.neutral() if r is None else r for r in self._rows])
            if self._rows
            else np.zeros((0, MOTION_SPACE.dim), np.float32)
        )
        motion = np.where(found[:, None], MOTION_SPACE.normalize(params), 0.0).astype(np.float32)
        reference = motion[found].mean(axis=0) if found.any() else np.zeros(MOTION_SPACE.dim, np.float32)
        return SideMotion(
            motion, found, reference.astype(np.float32), params[:, MOTION_SPACE.jaw_index].astype(np.float32)
        )


class OfficialSideReader:
    """Official-space motion of one party: tracked face crops -> `encode_motion` latents; with
    `with_mouth`, also the jaw opening from `FaceParamsExtractor` (for mono attribution)."""

    def __init__(self, model: Any, with_mouth: bool) -> None:
        from avatarforcing.integrations.face_tracking import FaceTracker

        self._model = model
        self._tracker = FaceTracker(model.cfg.input_size)
        self._mouth = DefaultSideReader() if with_mouth else None
        self._pending: list[np.ndarray] = []
        self._found: list[bool] = []
        self._latents: list[np.ndarray] = []

    def push(self, rgb: np.ndarray) -> None:
        result = self._tracker.update(rgb)
        self._found.append(result.has_face)
        if result.has_face:
            self._pending.append(result.crop)
            if len(self._pending) >= MOTION_BATCH:
                self._encode()
        if self._mouth is not None:
            self._mouth.push(rgb)

    def _encode(self) -> None:
        import torch

        from avatarforcing.engine.official.pipeline import images_to_model

        if not self._pending:
            return
        device = next(self._model.parameters()).device
        with torch.no_grad():
            latents = self._model.motion_autoencoder.encode_motion(images_to_model(np.stack(self._pending)).to(device))
        self._latents.append(latents.float().cpu().numpy())
        self._pending = []

    def finish(self) -> SideMotion:
        self._encode()
        self._tracker.close()
        found = np.array(self._found, bool)
        dim_w = self._model.cfg.dim_w
        motion = np.zeros((len(found), dim_w), np.float32)
        if found.any():
            motion[found] = np.concatenate(self._latents)
        reference = motion[int(np.argmax(found))] if found.any() else np.zeros(dim_w, np.float32)
        jaw = self._mouth.finish().jaw if self._mouth is not None else None
        return SideMotion(motion, found, reference.copy(), jaw)


@dataclass
class DefaultSpace:
    """Encoders of the default (interpretable) motion space."""

    name: str = "default"

    @property
    def dims(self) -> tuple[int, int]:
        from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_width
        from avatarforcing.schemas.motion_space import MOTION_SPACE

        return audio_width(DEFAULT_VOICING), MOTION_SPACE.dim

    def audio_features(self, samples: np.ndarray, frames: int) -> np.ndarray:
        from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_conditions

        return audio_conditions(np.asarray(samples, np.float32)[: frames * SAMPLES_PER_FRAME], DEFAULT_VOICING)

    def side_reader(self, with_mouth: bool) -> DefaultSideReader:
        return DefaultSideReader()

    def info(self) -> dict[str, Any]:
        from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING

        layout = "log-mel 80 + voicing history 4" if DEFAULT_VOICING else "log-mel 80"
        return {
            "motion_units": "normalized (avatarforcing.schemas.motion_space)",
            "audio_features": f"{layout} (avatarforcing.engine.embedded.audio_conditions)",
        }


@dataclass
class OfficialSpace:
    """Encoders of the official model (`model`: an `AvatarForcingModel`, eval mode)."""

    model: Any
    model_description: str = ""
    name: str = "official"

    @property
    def dims(self) -> tuple[int, int]:
        return self.model.cfg.dim_a, self.model.cfg.dim_w

    def audio_features(self, samples: np.ndarray, frames: int) -> np.ndarray:
        from avatarforcing.engine.official.audio_encoder import utterance_features

        return utterance_features(self.model.audio_encoder, samples, frames)

    def side_reader(self, with_mouth: bool) -> OfficialSideReader:
        return OfficialSideReader(self.model, with_mouth)

    def info(self) -> dict[str, Any]:
        return {
            "motion_units": "motion-autoencoder latents (encode_motion of tracked face crops)",
            "audio_features": "wav2vec2 + audio_projection, offline, whole-utterance normalisation",
            "model": self.model_description,
        }


# ------------------------------------------------------------------------------ conversations


@dataclass
class PartySide:
    """One party of a conversation, cut to T frames: 16 kHz `audio` [T*640], `motion`."""

    audio: np.ndarray
    motion: SideMotion
    label: str


def _read_sides(frames: Iterator[np.ndarray], readers: list, split: bool) -> int:
    count = 0
    for rgb in frames:
        if split:
            half = rgb.shape[1] // 2
            readers[0].push(rgb[:, :half])
            readers[1].push(rgb[:, half : 2 * half])
        else:
            readers[0].push(rgb)
        count += 1
    return count


def _cut(side: SideMotion, frames: int) -> SideMotion:
    jaw = None if side.jaw is None else side.jaw[:frames]
    return SideMotion(side.motion[:frames], side.found[:frames], side.reference, jaw)


def read_conversation(conv: Conversation, space) -> tuple[list[PartySide], dict[str, Any]]:
    """Both parties of `conv` at 25 fps, cut to a common length; ``(parties, notes)``."""
    notes: dict[str, Any] = {}
    if conv.layout == "side-by-side":
        path = conv.videos[0]
        channels = load_audio_channels(path)
        mono = channels.shape[0] == 1
        readers = [space.side_reader(with_mouth=mono) for _ in range(2)]
        video_frames = _read_sides(video_frames_25fps(path), readers, split=True)
        motions = [r.finish() for r in readers]
        labels = [f"left half of {path}", f"right half of {path}"]
        audio_frames = channels.shape[1] // SAMPLES_PER_FRAME
        frames = min(video_frames, audio_frames)
        _check_frames(frames, conv)
        motions = [_cut(m, frames) for m in motions]
        _check_faces(motions, labels)
        if mono:
            activity = [mouth_activity(m.jaw, m.found) for m in motions]
            left, right, share = attribute_mono_speech(channels[0], *activity)
            audios = [left, right]
            notes["audio"] = "mono, attributed by mouth activity"
            notes["left_share_mean"] = float(share.mean())
        else:
            audios = [channels[0], channels[1]]
            notes["audio"] = "stereo"
    else:
        motions, audios, labels, counts = [], [], [], []
        for path in conv.videos:
            samples = load_audio_channels(path).mean(axis=0)
            reader = space.side_reader(with_mouth=False)
            video_frames = _read_sides(video_frames_25fps(path), [reader], split=False)
            motions.append(reader.finish())
            audios.append(samples)
            labels.append(str(path))
            counts.extend([video_frames, len(samples) // SAMPLES_PER_FRAME])
        frames = min(counts)
        _check_frames(frames, conv)
        motions = [_cut(m, frames) for m in motions]
        _check_faces(motions, labels)
        notes["audio"] = "one track per party"
    notes["frames"] = frames
    notes["face_frames"] = [int(m.found.sum()) for m in motions]
    parties = [
        PartySide(np.asarray(a, np.float32)[: frames * SAMPLES_PER_FRAME], m, lab)
        for a, m, lab in zip(audios, motions, labels)
    ]
    return parties, notes


def _check_frames(frames: int, conv: Conversation) -> None:
    if frames < 1:
        raise DataPrepareError(f"{conv.source}: no complete 40 ms frame of both video and audio")


def _check_faces(motions: list[SideMotion], labels: list[str]) -> None:
    for motion, label in zip(motions, labels):
        if not motion.found.any():
            raise DataPrepareError(
                f"no face found in any of the {len(motion.found)} frames of the {label}; each party must show a face "
                "(side-by-side: left and right halves; two-tracks: each file)"
            )


def conversation_items(parties: list[PartySide], space) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Both sides as ``(suffix, tensors)``: ``a`` = party 0 is the avatar, ``b`` = party 1."""
    frames = len(parties[0].motion.found)
    from avatarforcing.engine.training.dataset import conversation_sides

    return conversation_sides(
        [space.audio_features(p.audio, frames) for p in parties],
        [p.motion.motion for p in parties],
        [p.motion.reference for p in parties],
        [frame_rms(p.audio, frames) for p in parties],
    )


@dataclass
class PrepareReport:
    """What `prepare_dataset` wrote: item ids per split and per-conversation notes."""

    items: dict[str, list[str]] = field(default_factory=lambda: {"train": [], "heldout": []})
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)


def prepare_dataset(
    out: Path,
    conversations: list[Conversation],
    space,
    heldout_fraction: float,
    progress: Callable[[int, int, str], None] | None = None,
) -> PrepareReport:
    """Write every conversation of `conversations` into the dataset at `out` (created, or
    extended when it has the same space and widths)."""
    from avatarforcing.engine.training.dataset import DatasetError, create_dataset, write_item

    held = heldout_ids([c.id for c in conversations], heldout_fraction)
    dim_a, dim_w = space.dims
    info = {
        "prepared_by": "avatarforcing data prepare",
        "layout": conversations[0].layout if conversations else "",
        **space.info(),
    }
    try:
        create_dataset(out, space.name, dim_a, dim_w, info, fps=FRAME_RATE)
    except DatasetError as error:
        raise DataPrepareError(str(error)) from error
    report = PrepareReport()
    for index, conv in enumerate(conversations):
        if progress:
            progress(index, len(conversations), conv.id)
        parties, notes = read_conversation(conv, space)
        split = "heldout" if conv.id in held else "train"
        for suffix, tensors in conversation_items(parties, space):
            item_id = f"{conv.id}-{suffix}"
            write_item(out, item_id, tensors, split, source=f"{conv.layout}: {conv.source} ({suffix})")
            report.items[split].append(item_id)
        report.conversations[conv.id] = {"split": split, **notes}
    if progress:
        progress(len(conversations), len(conversations), "")
    return report
