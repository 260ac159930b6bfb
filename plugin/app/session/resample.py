"""Any audio chunk -> 16 kHz mono float32, with FFmpeg's resampler keeping state between chunks."""

from __future__ import annotations

import numpy as np

from avatarforcing.plugin.api.types import AudioChunk
from avatarforcing.schemas.media_rates import SAMPLE_RATE


class MonoResampler:
    """Streaming converter of `AudioChunk`s (any rate, mono ``(n,)`` or ``(n, channels)``) to
    ``float32`` mono at `rate` Hz. Channels are averaged; the rate is converted by
    ``av.AudioResampler`` (swresample), created per input rate so state carries across chunks."""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._resampler = None
        self._input_rate = 0

    def convert(self, chunk: AudioChunk) -> np.ndarray:
        samples = np.asarray(chunk.samples, dtype=np.float32)
        if samples.ndim == 2:
            samples = samples.mean(axis=1, dtype=np.float32)
        elif samples.ndim != 1:
            raise ValueError(f"audio chunk must be (n,) or (n, channels), got shape {samples.shape}")
        if chunk.sample_rate <= 0:
            raise ValueError(f"audio chunk has sample rate {chunk.sample_rate}")
        if chunk.sample_rate == self.rate or samples.size == 0:
            return np.ascontiguousarray(samples)
        import av

        if self._resampler is None or self._input_rate != chunk.sample_rate:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.rate)
            self._input_rate = chunk.sample_rate
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = chunk.sample_rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
