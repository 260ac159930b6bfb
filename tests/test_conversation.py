"""The synthetic conversation generator: determinism, ranges and the documented behaviour rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avatarforcing.engine.embedded.audio_conditions import DEFAULT_VOICING, audio_width
from avatarforcing.engine.embedded.conversation import generate_conversation
from avatarforcing.engine.embedded.speech import Speaker, espeak_available, laugh, resample
from avatarforcing.engine.embedded.voicing import voicing_history
from avatarforcing.schemas.media_rates import FRAME_RATE as FPS
from avatarforcing.schemas.motion_space import MOTION_SPACE

JAW, SMILE, PITCH, BLINK = 5, 6, 1, 8


@pytest.fixture(scope="module")
def conversations():
    return [generate_conversation(seed, 24.0) for seed in range(3)]


def test_deterministic_by_seed():
    a, b = generate_conversation(7, 6.0), generate_conversation(7, 6.0)
    c = generate_conversation(8, 6.0)
    for pa, pb in zip(a.parties, b.parties):
        np.testing.assert_array_equal(pa.audio, pb.audio)
        np.testing.assert_array_equal(pa.motion, pb.motion)
    assert not np.array_equal(a.parties[0].motion, c.parties[0].motion)


def test_shapes_and_ranges(conversations):
    for conv in conversations:
        assert conv.frames == 24 * FPS
        for party in conv.parties:
            assert party.audio.shape == (conv.frames * 640,) and party.audio.dtype == np.float32
            assert party.motion.shape == (conv.frames, MOTION_SPACE.dim) and party.motion.dtype == np.float32
            assert (party.motion >= MOTION_SPACE.lows - 1e-6).all() and (
                party.motion <= MOTION_SPACE.highs + 1e-6
            ).all()
            assert party.energy.shape == (conv.frames,)
            assert np.abs(party.audio).max() <= 1.0
        assert sum(p.speaking.mean() for p in conv.parties) > 0.4  # people actually talk


def test_mouth_follows_own_audio(conversations):
    for conv in conversations:
        for party in conv.parties:
            assert np.corrcoef(party.motion[:, JAW], party.energy)[0, 1] > 0.5
            assert party.motion[~party.speaking & ~party.laughing, JAW].mean() < 0.1


def _lagged_corr(x: np.ndarray, y: np.ndarray, lag: int) -> float:
    """corr(x[t], y[t - lag])."""
    return (
        float(np.corrcoef(x[lag:], y[: len(y) - lag])[0, 1]) if lag > 0 else float(np.corrcoef(x[:lag], y[-lag:])[0, 1])
    )


def test_smiles_are_mirrored_with_a_human_delay(conversations):
    mirrored = 0
    for conv in conversations:
        for me in (0, 1):
            person, partner = conv.parties[me], conv.parties[1 - me]
            delay = int(round(person.personality.smile_delay_s * FPS))
            assert 0.3 * FPS - 1 <= delay <= 0.7 * FPS + 1
            mine, theirs = person.motion[delay:, SMILE], partner.motion[:-delay, SMILE]
            # the rule: my smile is at least gain x the partner's smile `delay` frames earlier
            assert (mine >= person.personality.mirror_gain * theirs - 1e-5).all()
            # ...and it is a reaction: when the partner starts smiling and I do not, I start later
            p_smile, my_smile = partner.motion[:, SMILE], person.motion[:, SMILE]
            rest = person.personality.base_smile + 0.05
            for onset in np.flatnonzero((p_smile[1:] > 0.3) & (p_smile[:-1] <= 0.3)) + 1:
                calm = not person.laughing[max(0, onset - 3) : onset + delay + 1].any()
                if onset + delay < conv.frames and calm and my_smile[max(0, onset - 3) : onset + 1].max() < rest:
                    assert my_smile[onset + delay // 2 - 1] < rest  # not yet
                    mirrored += my_smile[onset + delay] > rest  # now
    assert mirrored >= 3


def test_listener_nods_after_the_speakers_pauses():
    after, elsewhere = [], []
    for seed in range(4):
        conv = generate_conversation(seed, 24.0)
        for me in (0, 1):
            pitch = conv.parties[me].motion[:, PITCH].astype(np.float64)
            wiggle = np.abs(pitch - np.convolve(pitch, np.ones(25) / 25, mode="same"))
            partner = conv.parties[1 - me]
            ends = np.flatnonzero(partner.speaking[:-1] & ~partner.speaking[1:]) + 1
            mask = np.zeros(conv.frames, bool)
            for end in ends:
                mask[end + 2 : end + 25] = True
            quiet = ~conv.parties[me].speaking & ~conv.parties[me].laughing
            after.append(wiggle[mask & quiet].mean())
            elsewhere.append(wiggle[~mask & quiet].mean())
    assert np.mean(after) > 1.5 * np.mean(elsewhere)


def test_blinks_every_few_seconds(conversations):
    rates = []
    for conv in conversations:
        for party in conv.parties:
            closed = party.motion[:, BLINK] > 0.5
            onsets = np.count_nonzero(closed[1:] & ~closed[:-1])
            rates.append(onsets / (conv.frames / FPS) * 60)
    assert 6 < np.mean(rates) < 30  # one blink every 2-10 s on average


def test_formant_fallback_without_espeak():
    conv = generate_conversation(3, 6.0, use_espeak=False)
    assert conv.info["espeak"] is False
    assert max(p.speaking.mean() for p in conv.parties) > 0.2
    assert np.corrcoef(conv.parties[0].motion[:, JAW], conv.parties[0].energy)[0, 1] > 0.5


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_espeak_speech_is_16khz_and_trimmed():
    rng = np.random.default_rng(0)
    speech = Speaker(use_espeak=True).say("hello there, how are you", rng)
    assert speech.dtype == np.float32 and 0.5 * 16000 < len(speech) < 4 * 16000
    assert np.abs(speech[:80]).max() > 1e-3  # leading silence trimmed


def test_resample_keeps_the_pitch_and_laughter_has_bursts():
    t = np.arange(22050) / 22050
    tone = resample(np.sin(2 * np.pi * 440 * t), 22050, 16000)
    assert len(tone) == 16000
    assert abs(int(np.argmax(np.abs(np.fft.rfft(tone)))) - 440) <= 1
    burst = laugh(np.random.default_rng(0), 150.0)
    rms = np.sqrt((burst[: len(burst) // 640 * 640].reshape(-1, 640) ** 2).mean(1))
    loud = rms > 0.3 * rms.max()
    assert np.count_nonzero(loud[1:] & ~loud[:-1]) >= 2  # several "ha" syllables


def test_synth_command_writes_a_dataset(tmp_path):
    from avatarforcing.plugin.app.cli import main

    dataset = pytest.importorskip("avatarforcing.engine.training.dataset")
    out = tmp_path / "data"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--conversations",
            "3",
            "--seconds",
            "4",
            "--seed",
            "5",
            "--heldout-fraction",
            "0.3",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["space"] == "default" and manifest["dim_a"] == audio_width(DEFAULT_VOICING) and manifest["dim_w"] == 13
    )
    splits = [item["split"] for item in manifest["items"]]
    assert len(splits) == 6 and splits.count("heldout") == 2  # ceil(3 x 0.3) = 1 conversation, both sides
    train = dataset.ConversationDataset(out, "train")
    item = train[0]
    assert tuple(item["avatar_audio"].shape) == (100, audio_width(DEFAULT_VOICING)) and tuple(
        item["avatar_motion"].shape
    ) == (100, 13)
    assert "avatar_energy" in item
    # both sides of a conversation: one side's avatar motion is the other side's user motion
    names = [i["id"] for i in manifest["items"]]
    a, b = train[names.index("conv00000-a")], train[names.index("conv00000-b")]
    np.testing.assert_array_equal(a["avatar_motion"].numpy(), b["user_motion"].numpy())
    assert main(["synth", "--out", str(out), "--conversations", "1"]) == 2  # refuses a non-empty folder
    # the voicing history on request: the same log-mel rows, the party's history after them
    voiced = tmp_path / "voiced"
    args = ["synth", "--out", str(voiced), "--conversations", "3", "--seconds", "4", "--seed", "5"]
    assert main([*args, "--heldout-fraction", "0.3", "--voicing-history"]) == 0
    manifest = json.loads((voiced / "manifest.json").read_text())
    assert manifest["dim_a"] == 84 and "voicing history" in manifest["info"]["audio_features"]
    item = dataset.ConversationDataset(voiced, "train")[0]
    np.testing.assert_array_equal(item["avatar_audio"][:, :80].numpy(), train[0]["avatar_audio"][:, :80].numpy())
    np.testing.assert_array_equal(
        item["user_audio"][:, 80:].numpy(), voicing_history(item["user_audio"][:, :80].numpy())
    )


def test_nod_loss_weights_mark_the_head_pitch_after_the_users_listener_pauses(conversations):
    from avatarforcing.engine.embedded.audio_features import voiced_frames
    from avatarforcing.engine.embedded.synthetic_dataset import conversation_items
    from avatarforcing.engine.training.metrics import NOD_WINDOW, listener_pauses

    plain = dict(conversation_items(conversations[0]))
    weighted = dict(conversation_items(conversations[0], nod_loss_weight=8.0))
    assert "loss_weight" not in plain["a"]
    marked = 0
    for side in ("a", "b"):
        items = weighted[side]
        for key in plain[side]:
            np.testing.assert_array_equal(items[key], plain[side][key])  # nothing else changes
        w = items["loss_weight"]
        pauses = listener_pauses(voiced_frames(items["user_audio"]), voiced_frames(items["avatar_audio"]))
        expected = np.ones_like(w)
        for t in pauses:
            expected[t + NOD_WINDOW[0] : t + NOD_WINDOW[1], PITCH] = 8.0
        np.testing.assert_array_equal(w, expected)
        marked += len(pauses)
    assert marked >= 1  # 24 s of conversation has listener pauses to mark
