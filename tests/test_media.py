"""Media integration: decoding, encoding with exact timing, ffmpeg equivalence, uint8 mapping."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from avatarforcing.integrations.media import (
    MediaError,
    VideoWriter,
    ffprobe,
    ffprobe_duration,
    from_uint8_frame,
    iter_video_frames,
    load_audio,
    to_uint8_frame,
    video_info,
)

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"shared samples not found at {SAMPLES}")
needs_ffprobe = pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe not on PATH (apt-get install ffmpeg)"
)
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not on PATH (apt-get install ffmpeg)")

FPS = 25
SR = 16000


def _test_frame(i: int, height: int = 64, width: int = 96) -> np.ndarray:
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (i * 5) % 256
    frame[..., 1] = 100
    frame[..., 2] = 200 - i * 3
    return frame


def _sine(n: int, start: int = 0, freq: float = 440.0) -> np.ndarray:
    t = np.arange(start, start + n) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def round_trip_file(tmp_path_factory) -> Path:
    """50 frames at 25 fps with 2 s of 440 Hz audio written in uneven chunks."""
    path = tmp_path_factory.mktemp("media") / "round_trip.mp4"
    chunks = [333, 640, 1000, 17, 2500]
    written = 0
    with VideoWriter(path, FPS) as writer:
        for i in range(50):
            writer.write_frame(_test_frame(i))
            n = chunks[i % len(chunks)]
            n = min(n, 2 * SR - written)
            writer.write_audio(_sine(n, written))
            written += n
        writer.write_audio(_sine(2 * SR - written, written))
        assert writer.frames_written == 50
        assert writer.duration == pytest.approx(2.0)
    return path


def test_round_trip_video_info(round_trip_file):
    info = video_info(round_trip_file)
    assert (info.width, info.height) == (96, 64)
    assert info.fps == pytest.approx(25.0)
    assert info.frame_count == 50
    assert info.duration == pytest.approx(2.0, abs=1e-3)
    assert info.has_audio


def test_round_trip_frames_are_exactly_timed_and_faithful(round_trip_file):
    frames = list(iter_video_frames(round_trip_file))
    assert [index for index, _, _ in frames] == list(range(50))
    for index, pts, rgb in frames:
        assert pts == pytest.approx(index / FPS, abs=1e-6)
        assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
        diff = np.abs(rgb.astype(int) - _test_frame(index).astype(int))
        assert diff.mean() < 3.0, f"frame {index} differs by {diff.mean():.2f} on average"


def test_round_trip_audio(round_trip_file):
    audio = load_audio(round_trip_file)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC decodes in whole 1024-sample frames: at most one frame more than written
    assert 2 * SR <= audio.size <= 2 * SR + 1024
    spectrum = np.abs(np.fft.rfft(audio[: 2 * SR]))
    assert np.argmax(spectrum) * SR / (2 * SR) == pytest.approx(440.0, abs=2.0)
    assert np.sqrt(np.mean(audio[1000:31000] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)


def test_round_trip_stream_durations(round_trip_file):
    with av.open(str(round_trip_file)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert video.codec_context.pix_fmt == "yuv420p"
        assert audio.codec_context.name == "aac"
        assert audio.sample_rate == SR and audio.codec_context.layout.name == "mono"
        assert float(video.duration * video.time_base) == pytest.approx(2.0, abs=1e-3)
        assert float(audio.duration * audio.time_base) == pytest.approx(2.0, abs=1e-3)


@needs_ffprobe
def test_round_trip_ffprobe(round_trip_file):
    probe = ffprobe(round_trip_file)
    assert ffprobe_duration(round_trip_file) == pytest.approx(2.0, abs=0.01)
    streams = {s["codec_type"]: s for s in probe["streams"]}
    assert streams["video"]["codec_name"] == "h264"
    assert streams["video"]["pix_fmt"] == "yuv420p"
    assert int(streams["video"]["nb_frames"]) == 50
    assert streams["audio"]["codec_name"] == "aac"
    assert int(streams["audio"]["sample_rate"]) == SR


def test_audio_beyond_video_is_trimmed(tmp_path):
    path = tmp_path / "short_video.mp4"
    with VideoWriter(path, FPS) as writer:
        writer.write_audio(_sine(3 * SR))  # 3 s of audio, before any frame
        writer.write_frames(np.stack([_test_frame(i, 32, 32) for i in range(10)]))  # 0.4 s
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert float(audio.duration * audio.time_base) == pytest.approx(0.4, abs=1e-3)
    assert video_info(path).duration == pytest.approx(0.4, abs=1e-3)


def test_untrimmed_audio_is_kept(tmp_path):
    path = tmp_path / "long_audio.mp4"
    with VideoWriter(path, FPS, size=(32, 32), trim_audio=False) as writer:
        writer.write_frames(_test_frame(i, 32, 32) for i in range(10))
        writer.write_audio(_sine(SR))
    assert load_audio(path).size >= SR


def test_silent_video_and_fractional_rate(tmp_path):
    path = tmp_path / "silent.mp4"
    with VideoWriter(path, 30000 / 1001, audio_sample_rate=None) as writer:
        writer.write_frames(_test_frame(i, 32, 48) for i in range(30))
        with pytest.raises(ValueError, match="without audio"):
            writer.write_audio(_sine(100))
    info = video_info(path)
    assert not info.has_audio and info.frame_count == 30
    assert info.fps == pytest.approx(30000 / 1001)
    pts = [p for _, p, _ in iter_video_frames(path)]
    assert pts[-1] == pytest.approx(29 * 1001 / 30000, abs=1e-6)
    with pytest.raises(MediaError, match="no audio stream in .*silent.mp4"):
        load_audio(path)


def test_writer_rejects_bad_frames(tmp_path):
    with (
        VideoWriter(tmp_path / "bad.mp4", FPS, audio_sample_rate=None) as writer,
        pytest.raises(ValueError, match="even"),
    ):
        writer.write_frame(np.zeros((31, 32, 3), np.uint8))
    with VideoWriter(tmp_path / "bad2.mp4", FPS, size=(32, 32)) as writer, pytest.raises(ValueError, match="uint8"):
        writer.write_frame(np.zeros((32, 32, 3), np.float32))
        with pytest.raises(ValueError, match="differs"):
            writer.write_frame(np.zeros((64, 64, 3), np.uint8))
        writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(MediaError, match="closed"):
        writer.write_frame(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(MediaError, match="output folder does not exist"):
        VideoWriter(tmp_path / "missing_dir" / "x.mp4")


def test_missing_and_invalid_files_are_named(tmp_path):
    missing = tmp_path / "nothing_here.wav"
    with pytest.raises(MediaError, match="nothing_here.wav"):
        load_audio(missing)
    with pytest.raises(MediaError, match="nothing_here.wav"):
        video_info(missing)
    with pytest.raises(MediaError, match="nothing_here.wav"):
        next(iter_video_frames(missing))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_text("not a video")
    with pytest.raises(MediaError, match="garbage.mp4"):
        video_info(garbage)


@needs_samples
def test_user_video_info_and_frames():
    info = video_info(SAMPLES / "user.mp4")
    assert (info.width, info.height, info.frame_count) == (512, 512, 396)
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(15.84, abs=1e-3)
    assert info.has_audio
    count = 0
    for index, pts, rgb in iter_video_frames(SAMPLES / "user.mp4"):  # noqa: B007 - the last frame is checked below
        assert pts == pytest.approx(index / 25.0, abs=1e-6)
        count += 1
    assert count == 396 and rgb.shape == (512, 512, 3)


@needs_samples
def test_user_video_audio():
    audio = load_audio(SAMPLES / "user.mp4")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size / 16000 == pytest.approx(15.84, abs=0.05)
    assert 0.01 < np.abs(audio).max() <= 1.0
    with pytest.raises(MediaError, match="no video stream in .*avatar.wav"):
        video_info(SAMPLES / "avatar.wav")


@needs_samples
@needs_ffmpeg
@pytest.mark.parametrize("rate", [16000, 22050])
def test_load_audio_matches_ffmpeg_cli(tmp_path, rate):
    """The documented equivalence with `ffmpeg -ac 1 -ar RATE` (official preprocessing)."""
    raw = tmp_path / "ffmpeg.f32"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(SAMPLES / "user.mp4"),
            "-vn",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "-c:a",
            "pcm_f32le",
            "-f",
            "f32le",
            str(raw),
        ],
        check=True,
    )
    reference = np.fromfile(raw, dtype=np.float32)
    ours = load_audio(SAMPLES / "user.mp4", sample_rate=rate)
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5)


@needs_samples
def test_avatar_wav_loads_exactly():
    soundfile = pytest.importorskip("soundfile")
    audio = load_audio(SAMPLES / "avatar.wav")
    reference, rate = soundfile.read(SAMPLES / "avatar.wav", dtype="float32")
    assert rate == 16000
    assert audio.shape == (253005,)
    np.testing.assert_array_equal(audio, reference)


# --------------------------------------------------------------------------- uint8 mapping


def test_to_uint8_frame_fixed_mapping():
    x = np.zeros((3, 2, 2), np.float32)
    x[0] = [[-1.0, 1.0], [0.0, 5.0]]  # red: ends, middle, clipped above
    x[1] = [[-7.0, 0.5], [-0.5, 1 / 255.0]]  # green: clipped below, quarters
    x[2] = 1.0
    frame = to_uint8_frame(x)
    assert frame.shape == (2, 2, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], [[0, 255], [128, 255]])
    np.testing.assert_array_equal(frame[..., 1], [[0, 191], [64, 128]])
    np.testing.assert_array_equal(frame[..., 2], 255)


def test_to_uint8_frame_is_per_frame_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    clip = rng.uniform(-1.2, 1.2, size=(4, 3, 8, 8)).astype(np.float32)
    batch = to_uint8_frame(clip)
    assert batch.shape == (4, 8, 8, 3)
    for i in range(4):  # a frame's mapping does not depend on the rest of the clip
        np.testing.assert_array_equal(batch[i], to_uint8_frame(clip[i]))
    np.testing.assert_array_equal(batch, to_uint8_frame(torch.from_numpy(clip)))
    expected = np.floor((np.clip(clip, -1, 1) + 1) / 2 * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(batch, np.moveaxis(expected, 1, -1))
    with pytest.raises(ValueError, match="expected"):
        to_uint8_frame(np.zeros((8, 8, 3), np.float32))


def test_uint8_round_trip_through_model_range():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    values = from_uint8_frame(image)
    assert values.shape == (2, 3, 16, 16) and values.dtype == np.float32
    assert values.min() >= -1.0 and values.max() <= 1.0
    np.testing.assert_array_equal(to_uint8_frame(values), image)
