"""Synthetic dyadic conversations for training the default avatar, deterministic by seed.

`generate_conversation(seed, seconds)` returns two `PartyTrack`s (audio 16 kHz float32 and
motion [T, 13] in the default motion space, denormalized, 25 fps). The rules (documented in
docs/default_avatar.md):

- turn-taking: one party speaks 1-3 utterances (pauses of 0.25-0.7 s inside a turn), then a
  gap of 0.15-0.9 s (or a small overlap) and usually the other party takes the turn; the
  listener sometimes backchannels ("yeah", "mm hm") in the speaker's pauses;
- laughter: after an utterance the speaker laughs with p = 0.15; the listener laughs back
  after 0.2-0.5 s with p = 0.6;
- the speaker's mouth follows its own audio: jaw_open from the RMS envelope (fast attack, slow
  release, 40 ms lag), pucker on rounded vowels (low-frequency spectral balance), brows and
  small head nods on loudness onsets, more head sway while talking, gaze aversion at the start
  of utterances;
- the listener: a nod (damped 1.5-2.5 Hz pitch oscillation, 3-7 degrees) 0.1-0.4 s after the
  speaker's pauses (p = 0.6-0.9 per party), gaze on the speaker;
- smiles: each party smiles on its own now and then (every ~8 s, 1-3 s long, silent) and while
  laughing; each party mirrors the other's smile with a personal delay of 300-700 ms and gain
  0.5-0.9 (the only cue for a silent smile is the partner's face);
- blinks: Poisson, one every 3-5 s on average (per party), 4-6 frames, both eyes;
- idle sway: slow sums of sinusoids on yaw, pitch, roll and shifts; a personal head-pose bias
  which is also the party's reference (identity) vector.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatarforcing.engine.embedded.speech import BACKCHANNELS, Speaker, espeak_available, random_sentence
from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME
from avatarforcing.schemas.motion_space import MOTION_SPACE

YAW, PITCH, ROLL, SHIFT_X, SHIFT_Y, JAW, SMILE, PUCKER, BLINK_L, BLINK_R, BROW, GAZE_X, GAZE_Y = range(13)


@dataclass
class Personality:
    """Per-party behaviour constants drawn from the conversation seed."""

    expressiveness: float
    nod_probability: float
    smile_delay_s: float
    mirror_gain: float
    base_smile: float
    blink_interval_s: float
    bias: np.ndarray  # [13] denormalized resting pose/expression (the reference)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Personality:
        bias = np.zeros(13, np.float32)
        bias[YAW], bias[PITCH], bias[ROLL] = rng.normal(0, 3), rng.normal(0, 2.5), rng.normal(0, 2)
        bias[SHIFT_X], bias[SHIFT_Y] = rng.normal(0, 0.02), rng.normal(0, 0.01)
        bias[SMILE] = rng.uniform(0.0, 0.15)
        bias[BROW] = rng.normal(0, 0.1)
        return cls(
            expressiveness=float(rng.uniform(0.6, 1.4)),
            nod_probability=float(rng.uniform(0.6, 0.9)),
            smile_delay_s=float(rng.uniform(0.3, 0.7)),
            mirror_gain=float(rng.uniform(0.5, 0.9)),
            base_smile=float(bias[SMILE]),
            blink_interval_s=float(rng.uniform(3.0, 5.0)),
            bias=bias,
        )


@dataclass
class PartyTrack:
    """One party of a conversation. audio: float32 (T * 640,) 16 kHz (with a low noise floor);
    motion: float32 [T, 13] denormalized; energy: float32 [T] RMS of `audio` per 40 ms frame;
    reference: float32 [13] denormalized identity (resting) vector; speaking/laughing: bool [T]."""

    audio: np.ndarray
    motion: np.ndarray
    energy: np.ndarray
    reference: np.ndarray
    speaking: np.ndarray
    laughing: np.ndarray
    speaker: Speaker
    personality: Personality


@dataclass
class Conversation:
    seed: int
    frames: int
    parties: tuple[PartyTrack, PartyTrack]
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Schedule and audio
# --------------------------------------------------------------------------------------------
@dataclass
class _Event:
    party: int
    start: int  # sample
    audio: np.ndarray
    kind: str  # "speech" | "backchannel" | "laugh"

    @property
    def stop(self) -> int:
        return self.start + len(self.audio)


def _schedule(
    rng: np.random.Generator, speakers: tuple[Speaker, Speaker], total: int
) -> tuple[list[_Event], list[tuple[int, int]]]:
    """Events (who makes which sound when) and the speaker pauses as (party who paused, sample)."""
    events: list[_Event] = []
    pauses: list[tuple[int, int]] = []
    t = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    speaker = int(rng.integers(2))
    while t < total:
        listener = 1 - speaker
        for _u in range(int(rng.integers(1, 4))):
            if t >= total:
                break
            audio = speakers[speaker].say(random_sentence(rng), rng)
            events.append(_Event(speaker, t, audio, "speech"))
            t += len(audio)
            pauses.append((speaker, t))
            if rng.random() < 0.15:  # the speaker laughs; the listener often laughs back
                laugh = speakers[speaker].laugh(rng)
                start = t + int(rng.uniform(0.05, 0.2) * SAMPLE_RATE)
                events.append(_Event(speaker, start, laugh, "laugh"))
                if rng.random() < 0.6:
                    events.append(
                        _Event(
                            listener,
                            start + int(rng.uniform(0.2, 0.5) * SAMPLE_RATE),
                            speakers[listener].laugh(rng),
                            "laugh",
                        )
                    )
                t = start + len(laugh)
            pause = int(rng.uniform(0.25, 0.7) * SAMPLE_RATE)
            if rng.random() < 0.3:  # backchannel in the pause
                word = speakers[listener].say(str(rng.choice(BACKCHANNELS)), rng) * 0.7
                events.append(_Event(listener, t + int(0.12 * SAMPLE_RATE), word, "backchannel"))
                pause = max(pause, int(0.12 * SAMPLE_RATE) + len(word) + int(0.1 * SAMPLE_RATE))
            t += pause
        t += int(rng.uniform(-0.2, 0.5) * SAMPLE_RATE)
        if rng.random() < 0.85:
            speaker = 1 - speaker
    return events, pauses


def _frame_rms(audio: np.ndarray) -> np.ndarray:
    return np.sqrt((audio.reshape(-1, SAMPLES_PER_FRAME).astype(np.float64) ** 2).mean(axis=1))


def _rounded_vowel_score(audio: np.ndarray) -> np.ndarray:
    """[T] in [0, 1]: energy below 900 Hz vs 900-3000 Hz, high on rounded vowels (o, u)."""
    frames = audio.reshape(-1, SAMPLES_PER_FRAME) * np.hanning(SAMPLES_PER_FRAME)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(SAMPLES_PER_FRAME, 1.0 / SAMPLE_RATE)
    low = power[:, (freqs > 200) & (freqs < 900)].sum(axis=1)
    high = power[:, (freqs >= 900) & (freqs < 3000)].sum(axis=1)
    ratio = np.log10((low + 1e-10) / (high + 1e-10))
    return np.clip((ratio - 0.6) / 1.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Motion rules
# --------------------------------------------------------------------------------------------
def _smooth(x: np.ndarray, attack: float, release: float) -> np.ndarray:
    """One-pole follower with separate rise/fall coefficients (0..1, larger = faster)."""
    out = np.empty_like(x)
    y = 0.0
    for i, v in enumerate(x):
        y += (attack if v > y else release) * (v - y)
        out[i] = y
    return out


def _sway(rng: np.random.Generator, frames: int, amplitude: float) -> np.ndarray:
    t = np.arange(frames) / FRAME_RATE
    out = np.zeros(frames)
    for _ in range(3):
        out += np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + rng.uniform(0, 2 * np.pi)) / 3
    return amplitude * out


def _pulse(frames: int, start: int, length: int, shape: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros(frames)
    if shape is None:
        shape = np.sin(np.linspace(0, np.pi, max(length, 2)))
    stop = min(frames, start + len(shape))
    if 0 <= start < frames:
        out[start:stop] = shape[: stop - start]
    return out


def _own_smiles(rng: np.random.Generator, frames: int, laughing: np.ndarray) -> np.ndarray:
    """A party's spontaneous (silent) smiles plus smiles while laughing, [T] in [0, 1]."""
    smile = np.zeros(frames)
    t = rng.exponential(8.0)
    while t * FRAME_RATE < frames:
        length = int(rng.uniform(1.0, 3.0) * FRAME_RATE)
        ramp = min(8, length // 3)
        shape = np.concatenate((np.linspace(0, 1, ramp), np.ones(length - 2 * ramp), np.linspace(1, 0, ramp)))
        smile = np.maximum(smile, rng.uniform(0.3, 0.8) * _pulse(frames, int(t * FRAME_RATE), length, shape))
        t += length / FRAME_RATE + rng.exponential(8.0)
    laugh_smile = _smooth(laughing.astype(float) * 0.95, 0.4, 0.04)
    return np.maximum(smile, laugh_smile)


def _mirrored_smiles(
    own: tuple[np.ndarray, np.ndarray], people: tuple[Personality, Personality]
) -> tuple[np.ndarray, np.ndarray]:
    """Visible smile of each party: max(own, resting smile, gain x the partner's visible smile
    `delay` earlier), computed frame by frame."""
    frames = len(own[0])
    total = np.zeros((2, frames))
    delays = [max(1, int(round(p.smile_delay_s * FRAME_RATE))) for p in people]
    for i in range(frames):
        for party in (0, 1):
            partner, d = 1 - party, delays[party]
            mirrored = people[party].mirror_gain * total[partner, i - d] if i >= d else 0.0
            total[party, i] = min(1.0, max(own[party][i], people[party].base_smile, mirrored))
    return total[0], total[1]


def _blinks(rng: np.random.Generator, frames: int, interval_s: float) -> np.ndarray:
    out = np.zeros(frames)
    t = rng.exponential(interval_s)
    while t * FRAME_RATE < frames:
        length = int(rng.integers(4, 7))
        shape = np.concatenate((np.linspace(0.4, 1.0, length // 2), np.linspace(1.0, 0.1, length - length // 2)))
        out = np.maximum(out, _pulse(frames, int(t * FRAME_RATE), length, shape))
        t += max(0.3, rng.exponential(interval_s))
    return out


def _nod(frames: int, start: int, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    freq = rng.uniform(1.5, 2.5)
    length = int(FRAME_RATE * rng.uniform(1.0, 2.0) / freq)
    t = np.arange(length) / FRAME_RATE
    shape = amplitude * np.sin(2 * np.pi * freq * t) * np.exp(-t / 0.5)
    return _pulse(frames, start, length, shape)


def _gaze_and_aversion(
    rng: np.random.Generator, frames: int, utterance_starts: list[int], expressiveness: float
) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.zeros(frames), np.zeros(frames)
    t = 0
    while t < frames:  # small shifts around the partner
        length = int(rng.uniform(2.0, 6.0) * FRAME_RATE)
        gx[t : t + length] = rng.normal(0, 0.08)
        gy[t : t + length] = rng.normal(0, 0.05)
        t += length
    for start in utterance_starts:  # look away while starting to speak
        if rng.random() < 0.7:
            length = int(rng.uniform(0.5, 1.5) * FRAME_RATE)
            gx[start : start + length] = rng.choice([-1, 1]) * rng.uniform(0.3, 0.6) * expressiveness
            gy[start : start + length] = rng.uniform(-0.35, 0.05)
    return _smooth(gx, 0.6, 0.6), _smooth(gy, 0.6, 0.6)


def _party_motion(
    rng: np.random.Generator,
    frames: int,
    person: Personality,
    clean_audio: np.ndarray,
    speaking: np.ndarray,
    laughing: np.ndarray,
    smile: np.ndarray,
    partner_pauses: list[int],
    utterance_starts: list[int],
) -> np.ndarray:
    e = person.expressiveness
    m = np.zeros((frames, 13))
    rms = _frame_rms(clean_audio)
    level = np.clip(rms / 0.08, 0.0, 1.0) ** 0.6
    jaw = _smooth(level, 0.7, 0.35)
    jaw = np.concatenate(([0.0], jaw[:-1]))  # 40 ms lag of the mouth behind the sound
    m[:, JAW] = np.clip(jaw * (0.55 + 0.25 * e) + 0.35 * laughing * level, 0, 1)
    m[:, PUCKER] = _smooth(_rounded_vowel_score(clean_audio) * (level > 0.2), 0.5, 0.3) * 0.7
    onsets = np.clip(np.diff(_smooth(level, 0.3, 0.05), prepend=0.0), 0, None)
    emphasis = _smooth(np.clip(onsets * 6, 0, 1), 0.5, 0.08)
    talk = _smooth(speaking.astype(float), 0.1, 0.05)
    m[:, BROW] = 0.45 * e * emphasis + 0.25 * _smooth(laughing.astype(float), 0.3, 0.05)
    m[:, PITCH] = (
        4.0 * e * emphasis + _sway(rng, frames, 2.0) * (1 + talk) - 5.0 * _smooth(laughing.astype(float), 0.3, 0.08)
    )
    m[:, YAW] = _sway(rng, frames, 3.0) * (1 + 0.8 * talk)
    m[:, ROLL] = _sway(rng, frames, 1.5) * (1 + 0.5 * talk)
    m[:, SHIFT_X] = _sway(rng, frames, 0.02)
    m[:, SHIFT_Y] = _sway(rng, frames, 0.01) + 0.01 * emphasis
    for pause in partner_pauses:  # listener nods at the speaker's pauses
        if rng.random() < person.nod_probability:
            start = pause + int(rng.uniform(0.1, 0.4) * FRAME_RATE)
            m[:, PITCH] += _nod(frames, start, rng, rng.uniform(3.0, 7.0) * e)
    m[:, SMILE] = smile
    blink = _blinks(rng, frames, person.blink_interval_s)
    m[:, BLINK_L] = blink
    m[:, BLINK_R] = np.clip(blink * rng.uniform(0.9, 1.0), 0, 1)
    gx, gy = _gaze_and_aversion(rng, frames, utterance_starts, e)
    m[:, GAZE_X], m[:, GAZE_Y] = gx, gy
    m[:, YAW] += 6.0 * gx  # the head follows the eyes a little
    m += person.bias * np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0])
    return MOTION_SPACE.clip(m.astype(np.float32))


def generate_conversation(seed: int, seconds: float = 30.0, use_espeak: bool | None = None) -> Conversation:
    """A synthetic two-party conversation of `seconds` (>= 2), deterministic given `seed`."""
    if seconds < 2:
        raise ValueError(f"a conversation needs at least 2 seconds, got {seconds}")
    rng = np.random.default_rng(seed)
    frames = int(seconds * FRAME_RATE)
    total = frames * SAMPLES_PER_FRAME
    speakers = (Speaker.random(rng, use_espeak), Speaker.random(rng, use_espeak))
    people = (Personality.random(rng), Personality.random(rng))
    events, pauses = _schedule(rng, speakers, total)
    clean = [np.zeros(total + SAMPLE_RATE * 30, np.float32) for _ in range(2)]
    speaking = np.zeros((2, frames), bool)
    laughing = np.zeros((2, frames), bool)
    starts: list[list[int]] = [[], []]
    for ev in events:
        clean[ev.party][ev.start : ev.stop] += ev.audio
        a, b = ev.start // SAMPLES_PER_FRAME, min(frames, -(-ev.stop // SAMPLES_PER_FRAME))
        (laughing if ev.kind == "laugh" else speaking)[ev.party, a:b] = True
        if ev.kind == "speech" and a < frames:
            starts[ev.party].append(a)
    clean = [np.clip(c[:total], -1, 1) for c in clean]
    own = tuple(_own_smiles(rng, frames, laughing[p]) for p in (0, 1))
    smiles = _mirrored_smiles(own, people)
    tracks = []
    for p in (0, 1):
        partner_pauses = [s // SAMPLES_PER_FRAME for party, s in pauses if party == 1 - p and s < total]
        motion = _party_motion(
            rng, frames, people[p], clean[p], speaking[p], laughing[p], smiles[p], partner_pauses, starts[p]
        )
        noise_level = 10 ** (rng.uniform(-70, -50) / 20)
        audio = (clean[p] * rng.uniform(0.6, 1.4) + noise_level * rng.standard_normal(total)).astype(np.float32)
        tracks.append(
            PartyTrack(
                audio=np.clip(audio, -1, 1),
                motion=motion,
                energy=_frame_rms(audio).astype(np.float32),
                reference=MOTION_SPACE.clip(people[p].bias),
                speaking=speaking[p],
                laughing=laughing[p],
                speaker=speakers[p],
                personality=people[p],
            )
        )
    info = {
        "seed": seed,
        "seconds": seconds,
        "voices": [s.voice for s in speakers],
        "espeak": bool(use_espeak if use_espeak is not None else espeak_available()),
        "events": {k: sum(e.kind == k for e in events) for k in ("speech", "backchannel", "laugh")},
    }
    return Conversation(seed, frames, (tracks[0], tracks[1]), info)
