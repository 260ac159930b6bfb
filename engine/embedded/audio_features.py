"""Log-mel audio features of the default avatar: one 80-d row per 40 ms video frame.

Contract: 16 kHz mono float32 samples in; per video frame i (samples [640 i, 640 i + 640)) one
row of `LOG_MEL_DIM` = 80 = 2 sub-frames x 40 mel bands, float32. Each sub-frame (20 ms) is the
mean power of two causal STFT windows (25 ms Hann, 10 ms hop, window k covering samples
[160 k - 240, 160 k + 160), zeros before the start), so row i depends only on samples before
640 (i + 1): the streaming class gives exactly the rows of the offline function. Powers go
through a 40-band mel filterbank (50 Hz - 8 kHz), `log(power + floor)`, then fixed
normalization constants, so silence maps to one fixed vector (`SILENCE_ROW`).
"""

from __future__ import annotations

import numpy as np

from avatarforcing.schemas.media_rates import SAMPLE_RATE, SAMPLES_PER_FRAME

HOP = 160  # 10 ms
WINDOW = 400  # 25 ms
N_FFT = 512
MEL_BANDS = 40
SUB_FRAMES = 2
LOG_MEL_DIM = MEL_BANDS * SUB_FRAMES
F_MIN, F_MAX = 50.0, 8000.0
POWER_FLOOR = 1e-9
# fixed normalization: silence -> about -2.4, -60 dBFS noise -> about -1, loud speech bands -> about +2
LOG_MEAN = -11.0
LOG_SCALE = 4.0
_HISTORY = WINDOW - HOP  # samples of the past each new hop's window needs (240)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(bands: int = MEL_BANDS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular HTK-mel filters [n_fft // 2 + 1, bands], each normalized to unit area."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(F_MIN)), _hz_to_mel(np.array(F_MAX)), bands + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None)
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    return weights.T.astype(np.float64)


_FILTERBANK = mel_filterbank()
_HANN = np.hanning(WINDOW + 2)[1:-1]  # periodic-like Hann without zero end points


def _rows_from_signal(signal: np.ndarray, frames: int) -> np.ndarray:
    """signal: float64 [_HISTORY + frames * 640] (history first) -> rows [frames, 80] float32."""
    hops = frames * (SAMPLES_PER_FRAME // HOP)
    idx = np.arange(hops)[:, None] * HOP + np.arange(WINDOW)[None]
    windows = signal[idx] * _HANN
    power = np.abs(np.fft.rfft(windows, n=N_FFT, axis=-1)) ** 2 / WINDOW
    mel = power @ _FILTERBANK  # [hops, 40]
    mel = mel.reshape(frames, SUB_FRAMES, 2, MEL_BANDS).mean(axis=2)  # two hops per sub-frame
    rows = (np.log(mel + POWER_FLOOR) - LOG_MEAN) / LOG_SCALE
    return rows.reshape(frames, LOG_MEL_DIM).astype(np.float32)


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio must be mono 16 kHz samples of shape (n,), got shape {samples.shape}")
    return samples.astype(np.float64, copy=False)


def log_mel_features(samples: np.ndarray) -> np.ndarray:
    """float32 16 kHz mono (n,) -> [n // 640, LOG_MEL_DIM] float32 (trailing partial frame dropped)."""
    samples = _check_samples(samples)
    frames = len(samples) // SAMPLES_PER_FRAME
    if frames == 0:
        return np.zeros((0, LOG_MEL_DIM), np.float32)
    signal = np.concatenate((np.zeros(_HISTORY), samples[: frames * SAMPLES_PER_FRAME]))
    return _rows_from_signal(signal, frames)


SILENCE_ROW = log_mel_features(np.zeros(SAMPLES_PER_FRAME, np.float32))[0]


class StreamingLogMel:
    """Incremental `log_mel_features`: `push` returns the rows of every frame completed so far.

    The concatenated rows of any sequence of pushes equal `log_mel_features` of the concatenated
    samples. `flush()` ends the stream: the trailing partial frame is dropped (as offline), it
    returns the rows not returned yet (none) and resets the state for a new stream.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._history = np.zeros(_HISTORY)
        self._pending = np.zeros(0)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """(n,) samples -> [k, LOG_MEL_DIM] rows of the frames completed by them (k may be 0)."""
        pending = np.concatenate((self._pending, _check_samples(samples)))
        frames = len(pending) // SAMPLES_PER_FRAME
        if frames == 0:
            self._pending = pending
            return np.zeros((0, LOG_MEL_DIM), np.float32)
        used = frames * SAMPLES_PER_FRAME
        signal = np.concatenate((self._history, pending[:used]))
        rows = _rows_from_signal(signal, frames)
        self._history = signal[-_HISTORY:]
        self._pending = pending[used:]
        return rows

    def get_state(self) -> tuple[np.ndarray, np.ndarray]:
        """``(history float64 [240], pending float64 [k < 640])``: everything the next `push`
        depends on (copies), for saving a stream and resuming it elsewhere."""
        return self._history.copy(), self._pending.copy()

    def set_state(self, history: np.ndarray, pending: np.ndarray) -> None:
        """Resume from `get_state`'s arrays; the rows that follow equal those of the saved stream."""
        history, pending = np.asarray(history, np.float64), np.asarray(pending, np.float64)
        if history.shape != (_HISTORY,) or pending.ndim != 1 or len(pending) >= SAMPLES_PER_FRAME:
            raise ValueError(
                f"log-mel state must be history ({_HISTORY},) and pending (k < {SAMPLES_PER_FRAME},), "
                f"got {history.shape} and {pending.shape}"
            )
        self._history, self._pending = history.copy(), pending.copy()

    def flush(self) -> np.ndarray:
        """End of stream: rows not yet returned ([0, LOG_MEL_DIM]); the state is reset."""
        self.reset()
        return np.zeros((0, LOG_MEL_DIM), np.float32)


VOICED_ABOVE_FLOOR = 0.5  # log-mel units above a track's noise floor (x4 in ln power: ~17 dB)


def voiced_frames(features: np.ndarray) -> np.ndarray:
    """Which frames of a track's log-mel features ``[T, 80]`` carry speech: ``bool [T]``, the
    frame's mean above the track's noise floor (its 10th-percentile frame) by
    `VOICED_ABOVE_FLOOR`. For evaluation on whole tracks (it reads the track's floor first).
    Columns after the first 80 (features derived from the rows, such as a voicing history)
    are ignored."""
    level = np.asarray(features, np.float64)[:, :LOG_MEL_DIM].mean(axis=1)
    if level.size == 0:
        return np.zeros(0, bool)
    return level > np.percentile(level, 10) + VOICED_ABOVE_FLOOR
