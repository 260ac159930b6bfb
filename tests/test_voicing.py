"""Voicing history: causal channels of a party's recent voicing, streaming == offline."""

import numpy as np
import pytest

from avatarforcing.engine.embedded.audio_features import log_mel_features
from avatarforcing.engine.embedded.voicing import (
    QUIET_CAP,
    SINCE_CAP,
    STRETCH_CAP,
    VOICING_DIM,
    StreamingVoicingHistory,
    voicing_history,
    with_voicing_history,
)

RATE = 16000


def _track(pieces: list[tuple[str, float]], seed: int = 0) -> np.ndarray:
    """Log-mel rows of a track made of ("speech" | "silence", seconds) pieces over -60 dBFS noise;
    speech is a 200 Hz buzz with harmonics at about -20 dBFS."""
    rng = np.random.default_rng(seed)
    parts = []
    for kind, seconds in pieces:
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        part = 1e-3 * rng.standard_normal(n)
        if kind == "speech":
            part += 0.1 * sum(np.sin(2 * np.pi * 200 * h * t) / h for h in range(1, 8))
        parts.append(part)
    return log_mel_features(np.concatenate(parts).astype(np.float32))


def test_channels_follow_speech_and_the_pause_after_it():
    rows = _track([("silence", 1.0), ("speech", 1.2), ("silence", 0.12), ("speech", 0.4), ("silence", 5.0)])
    h = voicing_history(rows)
    assert h.shape == (len(rows), VOICING_DIM) and h.dtype == np.float32
    voiced, since, stretch, quiet = h.T
    # never spoke yet: silent for "ever"
    assert np.all(voiced[:20] == 0) and np.all(since[:20] == 1.0) and np.all(quiet[:20] == 1.0)
    # speaking: voiced, no time since, the stretch grows
    assert voiced[30:50].all() and np.all(since[30:50] == 0)
    assert np.all(np.diff(stretch[30:50]) > 0)
    # the 120 ms gap is bridged: the stretch runs on through the second phrase (1.2 + 0.12 + 0.4 s)
    end = 25 + 30 + 3 + 10  # frames at the end of the second phrase
    assert stretch[end + 5] == pytest.approx(min(STRETCH_CAP, 43) / STRETCH_CAP, abs=2 / STRETCH_CAP)
    # after it: the time since counts up to its cap, the stretch holds, the longer clock goes on
    after = since[end + 1 : end + 40]
    assert np.all(np.diff(after) >= 0) and after[-1] == 1.0
    assert np.all(stretch[end + 1 : end + 40] == stretch[end + 5])
    assert quiet[end + 50] == pytest.approx(min(50, QUIET_CAP) / QUIET_CAP, abs=3 / QUIET_CAP)
    assert since[end + 3] == pytest.approx(3 / SINCE_CAP, abs=2 / SINCE_CAP)


def test_a_new_phrase_after_a_real_pause_starts_a_new_stretch():
    rows = _track([("speech", 1.5), ("silence", 0.5), ("speech", 0.2), ("silence", 0.5)])
    stretch = voicing_history(rows)[:, 2]
    assert stretch[45] > 0.6 and stretch[-1] < 0.2  # 1.5 s, then a 0.2-s phrase of its own


def test_streaming_equals_offline_for_any_split():
    rows = _track([("speech", 0.7), ("silence", 0.3), ("speech", 1.1), ("silence", 1.5)], seed=3)
    rng = np.random.default_rng(1)
    stream, parts, i = StreamingVoicingHistory(), [], 0
    while i < len(rows):
        k = int(rng.integers(0, 6))
        parts.append(stream.push(rows[i : i + k]))
        i += k
    np.testing.assert_array_equal(np.concatenate(parts), voicing_history(rows))
    stream.reset()
    np.testing.assert_array_equal(stream.push(rows), voicing_history(rows))


def test_rows_are_kept_and_the_history_appended():
    rows = _track([("speech", 0.5), ("silence", 0.5)])
    both = with_voicing_history(rows)
    assert both.shape == (len(rows), rows.shape[1] + VOICING_DIM)
    np.testing.assert_array_equal(both[:, : rows.shape[1]], rows)
    with pytest.raises(ValueError, match="log-mel rows"):
        voicing_history(rows[:, :40])


# --------------------------------------------------------------------------------------------
# the default engine with a model that takes the voicing history
# --------------------------------------------------------------------------------------------
def _engine_with(width: int, folder, seed: int = 1):
    from dataclasses import replace

    from avatarforcing.engine.embedded.model import DEFAULT_MODEL_CONFIG, DefaultAvatarModel
    from avatarforcing.plugin.api.types import SessionInfo
    from avatarforcing.plugin.app.config import config_from_dict
    from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine

    if not (folder / "default_avatar.json").exists():
        DefaultAvatarModel.untrained(seed=0, cfg=replace(DEFAULT_MODEL_CONFIG, dim_a=width)).save(folder)
    engine = DefaultEngine(face_tracking=False, weights=str(folder))
    engine.open(SessionInfo("test", config_from_dict({"model": {"seed": seed, "backend": "torch_cpu"}})))
    return engine


def _ticks(seconds: float = 3.0):
    from avatarforcing.plugin.api.types import InputTick

    rng = np.random.default_rng(5)
    n = int(seconds * 25)
    t = np.arange(n * 640) / RATE
    speech = (0.1 * np.sin(2 * np.pi * 180 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)).astype(np.float32)
    user = (speech[::-1] + 1e-3 * rng.standard_normal(n * 640)).astype(np.float32)
    return [InputTick(i, 1, speech[i * 640 : (i + 1) * 640], user[i * 640 : (i + 1) * 640], [None]) for i in range(n)]


def test_engine_feeds_a_voicing_model_the_history_and_resumes_it_exactly(tmp_path):
    ticks = _ticks()
    whole = _engine_with(84, tmp_path)
    features = [whole.extract(t) for t in ticks]
    assert all(f.avatar_audio.shape == (1, 84) and f.user_audio.shape == (1, 84) for f in features)
    user_rows = np.concatenate([f.user_audio for f in features])
    np.testing.assert_array_equal(
        user_rows, with_voicing_history(log_mel_features(np.concatenate([t.user_audio for t in ticks])))
    )
    assert set(np.unique(user_rows[:, 80])) == {0.0, 1.0}  # the user speaks and pauses
    expected = np.concatenate(
        [b.latents for f in features for b in whole.generate(f)] + [b.latents for b in whole.finish()]
    )
    whole.close()

    first = _engine_with(84, tmp_path)
    cut = 37  # mid-block, inside a pause of the user's: counters and floor in the state
    latents = [b.latents for t in ticks[:cut] for b in first.generate(first.extract(t))]
    blob = first.save_state()
    first.close()
    second = _engine_with(84, tmp_path)
    second.load_state(blob)
    latents += [b.latents for t in ticks[cut:] for b in second.generate(second.extract(t))]
    latents += [b.latents for b in second.finish()]
    np.testing.assert_array_equal(np.concatenate(latents), expected)

    log_mel_only = _engine_with(80, tmp_path / "80")
    assert log_mel_only.extract(ticks[0]).avatar_audio.shape == (1, 80)
    with pytest.raises(ValueError, match="condition widths"):  # a stream of another model's layout
        log_mel_only.load_state(blob)


def test_a_model_of_another_audio_width_is_refused(tmp_path):
    with pytest.raises(ValueError, match="80 .log-mel. or 84"):
        _engine_with(88, tmp_path)
