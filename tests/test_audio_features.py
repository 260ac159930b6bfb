"""Log-mel features of the default avatar: shapes, silence, causality, streaming == offline."""

from __future__ import annotations

import numpy as np
import pytest

from avatarforcing.engine.embedded.audio_features import (
    LOG_MEL_DIM,
    MEL_BANDS,
    SILENCE_ROW,
    StreamingLogMel,
    log_mel_features,
    mel_filterbank,
)
from avatarforcing.schemas.media_rates import SAMPLES_PER_FRAME

RATE = 16000


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    tone = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((150, 300, 450, 900), start=1))
    return (0.2 * envelope * tone + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def test_shape_dtype_and_frame_count():
    samples = _speechlike(1.03)
    rows = log_mel_features(samples)
    assert LOG_MEL_DIM == 80
    assert rows.shape == (len(samples) // SAMPLES_PER_FRAME, LOG_MEL_DIM)
    assert rows.dtype == np.float32
    assert log_mel_features(np.zeros(SAMPLES_PER_FRAME - 1, np.float32)).shape == (0, LOG_MEL_DIM)


def test_silence_maps_to_one_fixed_vector():
    rows = log_mel_features(np.zeros(RATE, np.float32))
    np.testing.assert_array_equal(rows, np.broadcast_to(SILENCE_ROW, rows.shape))
    speech = log_mel_features(_speechlike(1.0))
    assert speech.mean() > SILENCE_ROW.mean() + 1.0  # speech is well above the floor
    assert speech.min() > -3.0 and speech.max() < 4.0  # normalized range


def test_tone_lands_in_its_mel_band_and_loudness_is_monotonic():
    t = np.arange(RATE) / RATE
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    rows = log_mel_features(tone)[2:]  # skip the frames whose window starts in the zero history
    band = int(np.argmax(mel_filterbank()[int(round(1000 / (RATE / 512)))]))
    for sub in range(2):
        assert int(np.argmax(rows[:, sub * MEL_BANDS : (sub + 1) * MEL_BANDS].mean(0))) == band
    louder = log_mel_features(tone * 4)[2:]
    assert (louder[:, band] > rows[:, band]).all()


def test_rows_are_causal():
    samples = _speechlike(1.0)
    changed = samples.copy()
    changed[10 * SAMPLES_PER_FRAME :] = np.random.default_rng(1).standard_normal(len(samples) - 10 * SAMPLES_PER_FRAME)
    a, b = log_mel_features(samples), log_mel_features(changed)
    np.testing.assert_array_equal(a[:10], b[:10])
    assert not np.allclose(a[10], b[10])


@pytest.mark.parametrize("chunk_sizes", [[640], [1, 639, 1280, 7], [160, 0, 333, 1000, 2048], [16000]])
def test_streaming_equals_offline(chunk_sizes):
    samples = _speechlike(2.0, seed=3)
    stream = StreamingLogMel()
    rows, pos, k = [], 0, 0
    while pos < len(samples):
        size = chunk_sizes[k % len(chunk_sizes)]
        rows.append(stream.push(samples[pos : pos + size]))
        pos, k = pos + size, k + 1
    rows.append(stream.flush())
    streamed = np.concatenate(rows)
    offline = log_mel_features(samples)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, atol=1e-5)


def test_flush_resets_for_a_new_stream():
    stream = StreamingLogMel()
    stream.push(_speechlike(0.5))
    stream.push(np.ones(100, np.float32))
    assert stream.flush().shape == (0, LOG_MEL_DIM)
    again = stream.push(np.zeros(SAMPLES_PER_FRAME, np.float32))
    np.testing.assert_array_equal(again[0], SILENCE_ROW)


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="mono 16 kHz"):
        log_mel_features(np.zeros((640, 2), np.float32))
    with pytest.raises(ValueError, match="mono 16 kHz"):
        StreamingLogMel().push(np.zeros((2, 640), np.float32))
