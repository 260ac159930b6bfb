"""Local speech synthesis for the synthetic training conversations (16 kHz mono float32).

`Speaker.say(text, rng)` uses espeak-ng (the apt package, run as a subprocess writing a WAV
file) when it is installed, else a pure-numpy formant synthesiser: additive harmonics of a
gliding f0 shaped by vowel formants, with noise bursts for consonants. `laugh(rng, f0)` makes a
laughter burst ("ha-ha-ha": breathy, high-pitched, decaying syllables). Everything is
deterministic given the numpy `Generator`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from avatarforcing.schemas.media_rates import SAMPLE_RATE

# F1, F2, F3 (Hz) of a few vowels; "rounded" ones (o, u) drive the pucker viseme
VOWEL_FORMANTS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
WORDS = [
    "well",
    "so",
    "I",
    "think",
    "that",
    "we",
    "could",
    "maybe",
    "try",
    "again",
    "tomorrow",
    "morning",
    "because",
    "the",
    "weather",
    "looks",
    "really",
    "nice",
    "and",
    "you",
    "know",
    "it",
    "would",
    "be",
    "good",
    "to",
    "go",
    "outside",
    "for",
    "a",
    "while",
    "then",
    "we",
    "can",
    "talk",
    "about",
    "the",
    "project",
    "over",
    "lunch",
    "if",
    "you",
    "want",
    "actually",
    "I",
    "was",
    "wondering",
    "whether",
    "you",
    "saw",
    "the",
    "news",
    "about",
    "the",
    "new",
    "bridge",
    "over",
    "the",
    "river",
    "it",
    "seems",
    "like",
    "they",
    "finally",
    "finished",
    "it",
    "after",
    "all",
    "those",
    "years",
    "right",
    "that",
    "is",
    "exactly",
    "what",
    "I",
    "meant",
    "oh",
    "wow",
    "really",
    "no",
    "way",
    "that",
    "sounds",
    "amazing",
    "honestly",
    "I",
    "do",
    "not",
    "know",
    "how",
    "you",
    "manage",
    "all",
    "of",
    "this",
    "but",
    "it",
    "looks",
    "like",
    "it",
    "works",
    "pretty",
    "well",
    "for",
    "you",
]
BACKCHANNELS = ("yeah", "mm hm", "right", "okay", "oh", "uh huh", "sure", "wow")


def espeak_available() -> bool:
    """True when the `espeak-ng` executable is on PATH."""
    return shutil.which("espeak-ng") is not None


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal by FFT truncation/padding -> float32."""
    if rate_in == rate_out or len(samples) == 0:
        return np.asarray(samples, np.float32)
    n_out = max(1, int(round(len(samples) * rate_out / rate_in)))
    spectrum = np.fft.rfft(np.asarray(samples, np.float64))
    bins = n_out // 2 + 1
    if len(spectrum) >= bins:
        spectrum = spectrum[:bins]
    else:
        spectrum = np.concatenate((spectrum, np.zeros(bins - len(spectrum), complex)))
    return (np.fft.irfft(spectrum, n=n_out) * (n_out / len(samples))).astype(np.float32)


def trim_silence(samples: np.ndarray, threshold: float = 1e-3) -> np.ndarray:
    """Cut leading and trailing samples quieter than `threshold` (absolute amplitude)."""
    loud = np.flatnonzero(np.abs(samples) > threshold)
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples[:0]


def random_sentence(rng: np.random.Generator, min_words: int = 4, max_words: int = 14) -> str:
    """A pseudo-sentence of words from a fixed vocabulary."""
    count = int(rng.integers(min_words, max_words + 1))
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), count))


def _envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        env[:attack] = np.linspace(0.0, 1.0, attack)
    if release:
        env[n - release :] = np.linspace(1.0, 0.0, release)
    return env


def voiced_segment(
    rng: np.random.Generator,
    duration: float,
    f0: float,
    formants: tuple[float, float, float],
    breathiness: float = 0.05,
    glide: float = 0.0,
) -> np.ndarray:
    """Additive harmonics of f0 (gliding by `glide` octaves, with jitter) under a formant envelope."""
    n = max(1, int(duration * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    f0_track = f0 * 2.0 ** (glide * t / max(duration, 1e-3)) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0_track) / SAMPLE_RATE
    harmonics = np.arange(1, int(4000 / f0) + 1)
    freqs = harmonics * f0
    gain = np.zeros(len(harmonics))
    for k, formant in enumerate(formants):
        bandwidth = 80.0 + 40.0 * k
        gain += (0.7**k) / (1.0 + ((freqs - formant) / bandwidth) ** 2)
    gain *= 1.0 / harmonics  # glottal spectral tilt
    wave = (gain[:, None] * np.sin(harmonics[:, None] * phase[None])).sum(axis=0)
    wave += breathiness * rng.standard_normal(n) * np.abs(wave).max()
    wave *= _envelope(n, int(0.015 * SAMPLE_RATE), int(0.03 * SAMPLE_RATE))
    return wave / (np.abs(wave).max() + 1e-9)


def noise_burst(rng: np.random.Generator, duration: float, brightness: float) -> np.ndarray:
    """Fricative-like noise, high-passed by differencing (`brightness` 0..1)."""
    n = max(1, int(duration * SAMPLE_RATE))
    noise = rng.standard_normal(n + 1)
    noise = (1 - brightness) * noise[1:] + brightness * np.diff(noise)
    return noise * _envelope(n, n // 4, n // 3) / 3.0


def formant_speech(rng: np.random.Generator, text: str, f0: float, rate: float = 1.0) -> np.ndarray:
    """Babble with the syllable count of `text`: consonant bursts + formant vowels, falling f0."""
    syllables = max(1, sum(ch in "aeiouy" for ch in text.lower()))
    vowels = list(VOWEL_FORMANTS)
    parts = []
    for s in range(syllables):
        declination = 1.0 - 0.15 * s / syllables
        if rng.random() < 0.7:
            parts.append(0.3 * noise_burst(rng, rng.uniform(0.03, 0.08) / rate, rng.uniform(0.2, 0.9)))
        vowel = VOWEL_FORMANTS[vowels[int(rng.integers(len(vowels)))]]
        parts.append(
            voiced_segment(rng, rng.uniform(0.09, 0.2) / rate, f0 * declination, vowel, glide=rng.uniform(-0.2, 0.1))
        )
        if rng.random() < 0.15:  # short gap between words
            parts.append(np.zeros(int(rng.uniform(0.04, 0.12) * SAMPLE_RATE)))
    return (0.3 * np.concatenate(parts)).astype(np.float32)


def espeak_speech(text: str, voice: str = "en-us", words_per_minute: int = 160, pitch: int = 50) -> np.ndarray:
    """espeak-ng -> 16 kHz float32, leading/trailing silence trimmed. Raises RuntimeError when it fails."""
    with tempfile.TemporaryDirectory(prefix="avatarforcing-espeak-") as tmp:
        wav = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-p", str(pitch), "-w", str(wav), text]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if result.returncode != 0 or not wav.exists():
            raise RuntimeError(f"espeak-ng failed ({result.returncode}): {result.stderr.strip()}")
        samples, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = resample(samples.mean(axis=1), rate, SAMPLE_RATE)
    return trim_silence(mono)


def laugh(rng: np.random.Generator, f0: float) -> np.ndarray:
    """A laughter burst: 3-7 breathy "ha" syllables, ~5 per second, high f0, decaying."""
    syllables = int(rng.integers(3, 8))
    parts = []
    for s in range(syllables):
        decay = 0.85**s
        breath = noise_burst(rng, rng.uniform(0.04, 0.07), 0.3) * 0.6
        vowel = voiced_segment(
            rng, rng.uniform(0.08, 0.13), f0 * rng.uniform(1.5, 1.9), VOWEL_FORMANTS["a"], breathiness=0.3, glide=-0.3
        )
        parts += [decay * breath, decay * vowel, np.zeros(int(rng.uniform(0.02, 0.06) * SAMPLE_RATE))]
    return (0.35 * np.concatenate(parts)).astype(np.float32)


@dataclass(frozen=True)
class Speaker:
    """A voice: espeak-ng `voice`/`pitch` (0-99)/`words_per_minute`, and `f0` (Hz) for the
    formant fallback and laughter. `use_espeak=None` means "when installed"."""

    voice: str = "en-us"
    pitch: int = 50
    words_per_minute: int = 160
    f0: float = 120.0
    use_espeak: bool | None = None

    @classmethod
    def random(cls, rng: np.random.Generator, use_espeak: bool | None = None) -> Speaker:
        female = rng.random() < 0.5
        voice = str(
            rng.choice(
                ["en-us", "en-gb", "en-us+f2", "en-gb+f3"]
                if female
                else ["en-us", "en-gb", "en-us+m3", "en-gb-scotland"]
            )
        )
        return cls(
            voice=voice,
            pitch=int(rng.integers(55, 85) if female else rng.integers(25, 55)),
            words_per_minute=int(rng.integers(140, 190)),
            f0=float(rng.uniform(170, 230) if female else rng.uniform(95, 140)),
            use_espeak=use_espeak,
        )

    def say(self, text: str, rng: np.random.Generator) -> np.ndarray:
        """Speech for `text`, 16 kHz float32 (n,), peak around 0.3-0.6."""
        use = espeak_available() if self.use_espeak is None else self.use_espeak
        if use:
            speech = espeak_speech(text, self.voice, self.words_per_minute, self.pitch)
            peak = np.abs(speech).max() if len(speech) else 1.0
            return (speech / max(peak, 1e-6) * rng.uniform(0.3, 0.6)).astype(np.float32)
        return formant_speech(rng, text, self.f0, self.words_per_minute / 160.0)

    def laugh(self, rng: np.random.Generator) -> np.ndarray:
        return laugh(rng, self.f0)
