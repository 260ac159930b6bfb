"""Voice activity of the avatar's audio and the speak/listen guidance policy.

`VoiceActivityDetector`: RMS energy in dBFS per 40 ms frame with hysteresis in time (speech
must last `attack_ms` to switch to speaking, silence `release_ms` to switch back), so short
clicks do not open the mouth and short pauses between words do not close it.
`SpeakListenPolicy` maps the detector's state to the guidance scales an engine gets before each
block (`MotionEngine.set_guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarforcing.schemas.media_rates import SAMPLE_RATE, SAMPLES_PER_FRAME


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of float32 samples in dB relative to full scale (-120 for silence)."""
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return max(-120.0, 20.0 * np.log10(rms)) if rms > 0 else -120.0


@dataclass(frozen=True)
class SpeakListenPolicy:
    """Guidance per block from voice activity. `mode` ``"voice"`` follows the detector,
    ``"fixed"`` always uses the speaking scales. Thresholds in dBFS, times in ms."""

    mode: str = "voice"
    threshold_db: float = -45.0
    attack_ms: float = 40.0
    release_ms: float = 200.0
    speak_scales: tuple[float, float] = (2.0, 1.0)
    listen_scales: tuple[float, float] = (1.0, 1.5)

    def __post_init__(self) -> None:
        if self.mode not in ("voice", "fixed"):
            raise ValueError(f"guidance mode must be 'voice' or 'fixed', got {self.mode!r}")
        if self.attack_ms < 0 or self.release_ms < 0:
            raise ValueError("attack_ms and release_ms must be >= 0")

    @classmethod
    def from_config(cls, config) -> SpeakListenPolicy:
        """From ``[session]`` (guidance, vad_*, speak_*/listen_*) and ``[model]`` (fixed mode)."""
        s, m = config.session, config.model
        speak = (s.speak_a_cfg, s.speak_u_cfg) if s.guidance == "voice" else (m.a_cfg_scale, m.u_cfg_scale)
        return cls(
            s.guidance, s.vad_threshold_db, s.vad_attack_ms, s.vad_release_ms, speak, (s.listen_a_cfg, s.listen_u_cfg)
        )

    def scales(self, speaking: bool) -> tuple[float, float]:
        """``(avatar_scale, user_scale)`` for the next block."""
        if self.mode == "fixed" or speaking:
            return self.speak_scales
        return self.listen_scales


class VoiceActivityDetector:
    """Energy + hysteresis detector; feed 16 kHz audio with `update`, read `speaking`."""

    def __init__(self, policy: SpeakListenPolicy, sample_rate: int = SAMPLE_RATE) -> None:
        self.policy = policy
        self.frame_ms = 1000.0 * SAMPLES_PER_FRAME / sample_rate
        self.speaking = False
        self._run_ms = 0.0  # how long the opposite state has been observed

    def update(self, samples: np.ndarray) -> float:
        """Consume samples (any multiple of 40 ms, float32 mono); returns the fraction of its
        40 ms frames above the threshold (the voice activity in [0, 1])."""
        frames = np.asarray(samples, dtype=np.float32).reshape(-1)
        count = max(1, frames.size // SAMPLES_PER_FRAME)
        loud = 0
        for k in range(count):
            frame = frames[k * SAMPLES_PER_FRAME : (k + 1) * SAMPLES_PER_FRAME]
            above = rms_dbfs(frame) > self.policy.threshold_db
            loud += above
            if above != self.speaking:
                self._run_ms += self.frame_ms
                needed = self.policy.attack_ms if above else self.policy.release_ms
                if self._run_ms >= needed:
                    self.speaking, self._run_ms = above, 0.0
            else:
                self._run_ms = 0.0
        return loud / count
