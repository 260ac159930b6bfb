"""Built-in plugin ``files``: sources that read audio and video files (demos, tests, renders).

- avatar audio and user audio: ``audio-file`` (any file with an audio track: WAV, FLAC, MP3, the
  audio of an MP4...) and ``silence``;
- user video and avatar video: ``video-file`` (any video file), resampled to a fixed frame
  rate.

Each source can pace itself to the wall clock (``realtime = true``, what a live session wants
from a file) or deliver as fast as it is read (offline render), and can loop. Decoding is
`avatarforcing.integrations.media` (PyAV); an audio file is decoded whole when its stream
starts (the same resampling as every other use of the file in avatarforcing), video frames
are decoded as they are read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import AudioChunk, Frame, OptionSpec, SourceSpec
from avatarforcing.schemas.media_rates import SAMPLE_RATE


def _media():
    """`avatarforcing.integrations.media`, imported on first use (keeps CLI start-up light)."""
    from avatarforcing.integrations import media

    return media


def _audio_file(path: str) -> str | None:
    """None when `path` is a media file with an audio track, else what is wrong with it."""
    return _media().stream_problem(path, "audio")


def _video_file(path: str) -> str | None:
    """None when `path` is a media file with a video stream, else what is wrong with it."""
    return _media().stream_problem(path, "video")


class _Clock:
    """Paces a stream to the wall clock; `closed` interrupts every wait."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self.closed = threading.Event()
        self._start: float | None = None

    def wait_until(self, stream_time: float) -> bool:
        """Sleep until `stream_time` seconds after the first call; False once closed."""
        if self.closed.is_set():
            return False
        if not self.realtime:
            return True
        now = time.monotonic()
        if self._start is None:
            self._start = now
        delay = self._start + stream_time - now
        if delay > 0:
            return not self.closed.wait(delay)
        return True


class AudioFileSource:
    """Mono float32 chunks of `chunk_ms` milliseconds at `sample_rate` from `path`."""

    def __init__(self, path: str, sample_rate: int, chunk_ms: int, realtime: bool, loop: bool) -> None:
        self.path = str(Path(path).expanduser())
        self.sample_rate = sample_rate
        self.chunk_samples = max(1, sample_rate * chunk_ms // 1000)
        self.loop = loop
        self._clock = _Clock(realtime)

    def __iter__(self) -> Iterator[AudioChunk]:
        index = 0
        offset = 0  # samples delivered so far
        while True:
            track = _media().load_audio(self.path, self.sample_rate)
            for start in range(0, len(track), self.chunk_samples):
                samples = track[start : start + self.chunk_samples]
                timestamp = offset / self.sample_rate
                if not self._clock.wait_until(timestamp):
                    return
                yield AudioChunk(samples, self.sample_rate, timestamp, index)
                index += 1
                offset += len(samples)
            if not self.loop or len(track) == 0:
                return

    def close(self) -> None:
        self._clock.closed.set()


class SilenceSource:
    """Zeros in `chunk_ms` chunks; `seconds` 0 means endless."""

    def __init__(self, seconds: float, sample_rate: int, chunk_ms: int, realtime: bool) -> None:
        self.total = int(round(seconds * sample_rate)) if seconds > 0 else None
        self.sample_rate = sample_rate
        self.chunk_samples = max(1, sample_rate * chunk_ms // 1000)
        self._clock = _Clock(realtime)

    def __iter__(self) -> Iterator[AudioChunk]:
        index = offset = 0
        while self.total is None or offset < self.total:
            size = self.chunk_samples if self.total is None else min(self.chunk_samples, self.total - offset)
            timestamp = offset / self.sample_rate
            if not self._clock.wait_until(timestamp):
                return
            yield AudioChunk(np.zeros(size, np.float32), self.sample_rate, timestamp, index)
            index += 1
            offset += size

    def close(self) -> None:
        self._clock.closed.set()


class VideoFileSource:
    """RGB frames of `path`, resampled to `fps` (0: the file's own frames and timestamps).

    Resampling holds the latest decoded frame whose time is at or before each output tick
    (frames are repeated or dropped, never blended).
    """

    def __init__(self, path: str, fps: float, realtime: bool, loop: bool) -> None:
        self.path = str(Path(path).expanduser())
        self.fps = fps
        self.loop = loop
        self._clock = _Clock(realtime)

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        """``(image, seconds since the first frame)`` of one pass over the file."""
        first = None
        for _, pts, image in _media().iter_video_frames(self.path):
            first = pts if first is None else first
            yield image, pts - first

    def _period(self) -> float:
        return 1.0 / _media().video_info(self.path).fps

    def _one_pass(self, time_offset: float) -> Iterator[tuple[np.ndarray, float]]:
        """``(image, time)`` for one pass over the file, times shifted by `time_offset`."""
        decoded = self._decoded()
        try:
            if self.fps <= 0:
                for image, t in decoded:
                    yield image, time_offset + t
                return
            period = self._period()
            step = 1.0 / self.fps
            tick = 0
            held: np.ndarray | None = None
            end = 0.0
            for image, t in decoded:
                while held is not None and tick * step < t - 1e-6:
                    yield held, time_offset + tick * step
                    tick += 1
                held, end = image, t + period
            while held is not None and tick * step < end - 1e-6:
                yield held, time_offset + tick * step
                tick += 1
        finally:
            decoded.close()

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        offset = 0.0
        while True:
            last_time = None
            for image, t in self._one_pass(offset):
                if not self._clock.wait_until(t):
                    return
                yield Frame(image, index, t)
                index += 1
                last_time = t
            if not self.loop or last_time is None:
                return
            offset = last_time + (1.0 / self.fps if self.fps > 0 else self._period())

    def close(self) -> None:
        self._clock.closed.set()


# -- options -------------------------------------------------------------------------------------
# the checks open the file: a live session refuses a file it cannot read before going live
PATH = OptionSpec("path", str, "", "audio or video file to read", required=True, check=_audio_file)
SAMPLE_RATE = OptionSpec("sample_rate", int, SAMPLE_RATE, "output sample rate in Hz", minimum=8000, maximum=192000)
CHUNK_MS = OptionSpec("chunk_ms", int, 40, "chunk length in milliseconds", minimum=1, maximum=1000)
REALTIME = OptionSpec("realtime", bool, False, "pace the stream to the wall clock")
LOOP = OptionSpec("loop", bool, False, "start again at the end of the file")

AUDIO_FILE = SourceSpec(
    name="audio-file",
    description="audio track of a file (WAV, FLAC, MP3, MP4...), mono float32",
    factory=AudioFileSource,
    options=(PATH, SAMPLE_RATE, CHUNK_MS, REALTIME, LOOP),
    reads_file=True,
)
SILENCE = SourceSpec(
    name="silence",
    description="digital silence, endless or of a given length",
    factory=SilenceSource,
    options=(
        OptionSpec("seconds", float, 0.0, "length in seconds (0 = endless)", minimum=0.0),
        SAMPLE_RATE,
        CHUNK_MS,
        OptionSpec("realtime", bool, True, "pace the stream to the wall clock"),
    ),
)
VIDEO_FILE = SourceSpec(
    name="video-file",
    description="frames of a video file (MP4, MKV, WebM...), RGB, resampled to a fixed rate",
    factory=VideoFileSource,
    options=(
        OptionSpec("path", str, "", "video file to read", required=True, check=_video_file),
        OptionSpec("fps", float, 25.0, "output frame rate (0 = the file's own frames)", minimum=0.0, maximum=240.0),
        REALTIME,
        LOOP,
    ),
    reads_file=True,
)


# -- hooks ---------------------------------------------------------------------------------------
@hookimpl
def register_avatar_audio_sources() -> list[SourceSpec]:
    return [AUDIO_FILE, SILENCE]


@hookimpl
def register_user_audio_sources() -> list[SourceSpec]:
    return [AUDIO_FILE, SILENCE]


@hookimpl
def register_user_video_sources() -> list[SourceSpec]:
    return [VIDEO_FILE]


@hookimpl
def register_avatar_video_sources() -> list[SourceSpec]:
    return [VIDEO_FILE]
