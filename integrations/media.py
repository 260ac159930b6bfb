"""Audio and video files: decoding, encoding, and the frame <-> uint8 mappings.

Everything goes through PyAV (``av``), which bundles the FFmpeg libraries, so no ``ffmpeg``
binary is needed at run time. Only :func:`ffprobe` / :func:`ffprobe_duration` call the
``ffprobe`` executable; they exist for tests and diagnostics.

Conventions: audio is float32 mono in [-1, 1] at ``sample_rate`` Hz (16 kHz by default, the
model's rate); frames are RGB uint8 ``[H, W, 3]``; model-side images are float ``[3, S, S]`` in
[-1, 1].
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE


class MediaError(RuntimeError):
    """A media file is missing, unreadable, or lacks the stream asked for (message names it)."""


# ----------------------------------------------------------------------------------- reading


def _open_input(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"media file not found: {path}")
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as exc:
        raise MediaError(f"cannot open media file {path}: {exc}") from exc


def stream_problem(path: str | Path, kind: str) -> str | None:
    """Why `path` cannot give a stream of `kind` (``"audio"`` or ``"video"``): ``"file not
    found"``, ``"cannot be opened as media (...)"`` or ``"has no audio stream"``; None when
    it can. Cheap: opens the container, decodes nothing (a file damaged further in fails when
    it is read)."""
    if kind not in ("audio", "video"):
        raise ValueError(f"kind must be 'audio' or 'video', got {kind!r}")
    if not Path(path).expanduser().is_file():
        return "file not found"
    try:
        with av.open(str(Path(path).expanduser()), mode="r") as container:
            streams = container.streams.audio if kind == "audio" else container.streams.video
            return None if streams else f"has no {kind} stream"
    except (av.FFmpegError, OSError) as exc:
        return f"cannot be opened as media ({getattr(exc, 'strerror', None) or exc})"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of ``path`` (WAV, mp4, mkv, ...) to float32 mono.

    Returns a 1-D float32 array at ``sample_rate`` Hz. Channels are down-mixed and the rate is
    converted with FFmpeg's libswresample (PyAV ``AudioResampler``) at its default settings,
    which is what ``ffmpeg -i FILE -vn -ac 1 -ar 16000 -c:a pcm_f32le`` (the official
    preprocessing) does; on ``samples/user.mp4`` the two agree sample for sample (max |diff|
    < 1e-6, same length; see tests/test_media.py). Like the ffmpeg CLI, the decoded length is
    what the decoder emits (for AAC: whole 1024-sample frames).

    Raises :class:`MediaError` naming the file when it is missing, unreadable, or has no
    audio stream.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    with _open_input(path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler run on sample counts, not timestamps
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode audio of {path}: {exc}") from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def audio_duration(path: str | Path) -> float:
    """Seconds of the first audio stream of ``path`` as its container states them (cheap: no
    decoding); :class:`MediaError` naming the file when it is unreadable or has no audio."""
    with _open_input(path) as container:
        if not container.streams.audio:
            raise MediaError(f"no audio stream in {path}")
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        return 0.0


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video file. ``fps`` is the stream's average rate; ``frame_count`` is
    counted by demuxing when the container does not state it; ``duration`` in seconds."""

    path: str
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    has_audio: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height


def video_info(path: str | Path) -> VideoInfo:
    """Read :class:`VideoInfo` of ``path``; :class:`MediaError` naming the file if it has no
    video stream or cannot be read."""
    with _open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise MediaError(f"cannot determine the frame rate of {path}")
        fps = float(rate)
        frame_count = int(stream.frames or 0)
        if frame_count <= 0:
            frame_count = sum(1 for packet in container.demux(stream) if packet.size > 0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = frame_count / fps
        return VideoInfo(
            path=str(path),
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            fps=fps,
            frame_count=frame_count,
            duration=duration,
            has_audio=bool(container.streams.audio),
        )


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


def iter_video_frames(path: str | Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(index, pts_seconds, rgb)`` for every frame of the first video stream, in
    presentation order; ``rgb`` is uint8 ``[H, W, 3]``. ``pts_seconds`` falls back to
    ``index / fps`` when a frame carries no timestamp.

    Raises :class:`MediaError` naming the file when it is missing, unreadable or has no video.
    """
    with _open_input(path) as container:
        if not container.streams.video:
            raise MediaError(f"no video stream in {path}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        try:
            for index, frame in enumerate(container.decode(stream)):
                pts = frame.time if frame.time is not None else index / fps
                yield index, float(pts), frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise MediaError(f"cannot decode video of {path}: {exc}") from exc


# ----------------------------------------------------------------------------------- writing


def _as_fraction(fps: float | int | Fraction) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


class VideoWriter:
    """Write RGB uint8 frames at a fixed rate to an H.264 (yuv420p) mp4, with an optional AAC
    audio track, so the file plays in browsers, players and editors.

    Frame ``i`` gets pts ``i / fps`` exactly; the video lasts ``frames_written / fps`` seconds.
    Audio (float32 mono in [-1, 1] at ``audio_sample_rate``) is appended with
    :meth:`write_audio` in any chunking; it is encoded only up to the current video time while
    frames keep coming, and at :meth:`close` whatever lies beyond the end of the video is
    dropped when ``trim_audio`` is true (so audio never makes the file longer than its video).
    Set ``audio_sample_rate=None`` for a silent file.

    ``size`` is ``(width, height)``; when ``None`` it is taken from the first frame. Width and
    height must be even (a yuv420p requirement). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float | int | Fraction = 25,
        *,
        size: tuple[int, int] | None = None,
        audio_sample_rate: int | None = SAMPLE_RATE,
        crf: int = 18,
        preset: str = "medium",
        audio_bit_rate: int = 96_000,
        trim_audio: bool = True,
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.audio_sample_rate = audio_sample_rate
        self.trim_audio = trim_audio
        self._crf = int(crf)
        self._preset = preset
        self._audio_bit_rate = int(audio_bit_rate)
        self._size: tuple[int, int] | None = None
        self._video_stream = None
        self._audio_stream = None
        self._pending_audio: list[np.ndarray] = []
        self._audio_samples_encoded = 0
        self.frames_written = 0
        self._closed = False
        self._failed = False  # a write failed (disk full, disk gone): close must not flush
        if not self.path.parent.is_dir():
            raise MediaError(f"output folder does not exist: {self.path.parent}")
        self._container = av.open(str(self.path), mode="w", format="mp4", options={"movflags": "+faststart"})
        if size is not None:
            self._open_streams(*size)

    # -- setup
    def _open_streams(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"frame size must be positive and even for yuv420p, got {width}x{height}")
        video = self._container.add_stream("libx264", rate=self.fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.time_base = 1 / self.fps
        video.options = {"crf": str(self._crf), "preset": self._preset}
        self._video_stream = video
        if self.audio_sample_rate is not None:
            audio = self._container.add_stream("aac", rate=int(self.audio_sample_rate))
            audio.layout = "mono"
            audio.bit_rate = self._audio_bit_rate
            self._audio_stream = audio
        self._size = (width, height)

    # -- public API
    @property
    def duration(self) -> float:
        """Seconds of video written so far (``frames_written / fps``)."""
        return float(self.frames_written / self.fps)

    def write_frame(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 ``[H, W, 3]`` frame (pts = frame index / fps)."""
        self._check_open()
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
        height, width = frame.shape[:2]
        if self._video_stream is None:
            self._open_streams(width, height)
        if (width, height) != self._size:
            raise ValueError(f"frame size {width}x{height} differs from the stream's {self._size[0]}x{self._size[1]}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = self._video_stream.codec_context.time_base
        self._mux(self._video_stream.encode(video_frame))
        self.frames_written += 1
        self._encode_audio(limit=self._audio_samples_for_video())

    def write_frames(self, frames) -> None:
        """Append each frame of an iterable (or ``[N, H, W, 3]`` array)."""
        for frame in frames:
            self.write_frame(frame)

    def write_audio(self, samples: np.ndarray) -> None:
        """Append float32 mono samples at ``audio_sample_rate`` (any chunk length)."""
        self._check_open()
        if self.audio_sample_rate is None:
            raise ValueError("this VideoWriter was created without audio (audio_sample_rate=None)")
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio must be 1-D mono samples, got shape {samples.shape}")
        if samples.size:
            self._pending_audio.append(samples)
        if self._video_stream is not None:
            self._encode_audio(limit=self._audio_samples_for_video())

    def close(self) -> None:
        """Encode what is left, flush the encoders and finish the file (idempotent). When no
        frame was written and no ``size`` was given, no file is created."""
        if self._closed:
            return
        self._closed = True
        try:
            # after a failed write, flushing the encoders crashes the process (PyAV 18): the
            # file is incomplete anyway, so only the container is closed
            if self._video_stream is not None and not self._failed:
                limit = self._audio_samples_for_video() if self.trim_audio else None
                self._encode_audio(limit=limit)
                self._mux(self._video_stream.encode(None))
                if self._audio_stream is not None:
                    self._mux(self._audio_stream.encode(None))
        finally:
            self._container.close()

    def _mux(self, packets) -> None:
        """Write `packets`; a failure (OSError: disk full, disk gone) marks the writer failed."""
        try:
            self._container.mux(packets)
        except BaseException:
            self._failed = True
            raise

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- internals
    def _check_open(self) -> None:
        if self._closed:
            raise MediaError(f"VideoWriter for {self.path} is closed")

    def _audio_samples_for_video(self) -> int:
        """Audio samples that cover the video written so far."""
        if self.audio_sample_rate is None:
            return 0
        return int(self.frames_written * self.audio_sample_rate / self.fps)

    def _encode_audio(self, limit: int | None) -> None:
        """Encode pending audio up to absolute sample ``limit`` (all of it when ``None``);
        samples past the limit stay pending."""
        if self._audio_stream is None or not self._pending_audio:
            return
        pending = np.concatenate(self._pending_audio)
        budget = pending.size if limit is None else max(0, limit - self._audio_samples_encoded)
        take, keep = pending[:budget], pending[budget:]
        self._pending_audio = [keep] if keep.size else []
        if not take.size:
            return
        audio_frame = av.AudioFrame.from_ndarray(take.reshape(1, -1), format="fltp", layout="mono")
        audio_frame.sample_rate = int(self.audio_sample_rate)
        audio_frame.pts = self._audio_samples_encoded
        audio_frame.time_base = Fraction(1, int(self.audio_sample_rate))
        self._mux(self._audio_stream.encode(audio_frame))
        self._audio_samples_encoded += take.size


# ------------------------------------------------------------------------------ frame mapping


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().to("cpu").float().numpy()
    return np.asarray(x)


def to_uint8_frame(x) -> np.ndarray:
    """Map model output in [-1, 1] to displayable uint8 frames.

    ``x``: numpy array or torch tensor ``[3, S, S]`` (one frame) or ``[N, 3, S, S]``.
    Returns ``[S, S, 3]`` or ``[N, S, S, 3]`` uint8, each value
    ``round((clip(x, -1, 1) + 1) / 2 * 255)`` (round half up).

    Deliberate deviation from the official ``save_video``, which min-max normalises over the
    whole clip and truncates: that makes each frame's brightness depend on every other frame,
    which cannot stream and flickers when applied per block. This fixed map is per frame.
    """
    array = _to_numpy(x).astype(np.float32, copy=False)
    if array.ndim not in (3, 4) or array.shape[-3] != 3:
        raise ValueError(f"expected [3, S, S] or [N, 3, S, S], got shape {array.shape}")
    scaled = (np.clip(array, -1.0, 1.0) + 1.0) * 127.5
    frames = np.floor(scaled + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(frames, -3, -1))


def from_uint8_frame(frame: np.ndarray) -> np.ndarray:
    """Map an RGB uint8 ``[H, W, 3]`` (or ``[N, H, W, 3]``) image to model input float32
    ``[3, H, W]`` (or ``[N, 3, H, W]``) with ``(x - 127.5) / 127.5``, the official
    normalisation (mean 0.5, std 0.5, max pixel 255)."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim not in (3, 4) or frame.shape[-1] != 3:
        raise ValueError(f"expected uint8 [H, W, 3] or [N, H, W, 3], got {frame.dtype} {frame.shape}")
    values = (frame.astype(np.float32) - 127.5) / 127.5
    return np.ascontiguousarray(np.moveaxis(values, -1, -3))


# ------------------------------------------------------------------------------- ffprobe (CLI)


def ffprobe_available() -> bool:
    """True when an ``ffprobe`` executable is on PATH."""
    return shutil.which("ffprobe") is not None


def ffprobe(path: str | Path) -> dict:
    """Run ``ffprobe -show_format -show_streams`` on ``path`` and return its JSON as a dict.

    Raises :class:`MediaError` when ffprobe is not installed (``apt-get install ffmpeg``) or
    rejects the file."""
    exe = shutil.which("ffprobe")
    if exe is None:
        raise MediaError("ffprobe not found on PATH (install FFmpeg, e.g. apt-get install ffmpeg)")
    result = subprocess.run(
        [exe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise MediaError(f"ffprobe failed on {path}: {result.stderr.strip()}")
    return json.loads(result.stdout)


def ffprobe_duration(path: str | Path) -> float:
    """Container duration of ``path`` in seconds as ffprobe reports it."""
    return float(ffprobe(path)["format"]["duration"])
