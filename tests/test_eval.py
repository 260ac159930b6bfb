"""Evaluation metrics on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from avatarforcing.engine.training.metrics import (
    ConversationMotion,
    MotionGroups,
    diversity,
    evaluate,
    jitter,
    kmeans,
    lip_sync,
    listener_pauses,
    markdown_table,
    nod_response,
    pause_lock,
    reactiveness,
    silent_moments,
    variance,
)

GROUPS = MotionGroups(pose=(0, 1), expression=(2, 3), jaw=2)


def _signals(frames=200, seed=0):
    rng = np.random.default_rng(seed)
    user = rng.standard_normal((frames, 4))
    truth = 0.7 * user + 0.3 * rng.standard_normal((frames, 4))
    return user, truth


def test_reactiveness_is_zero_for_the_truth_and_large_for_a_model_that_ignores_the_user():
    user, truth = _signals()
    assert reactiveness(user, truth, truth, GROUPS.pose) == 0
    ignoring = np.random.default_rng(1).standard_normal(truth.shape)
    assert reactiveness(user, ignoring, truth, GROUPS.pose) > 0.8
    assert reactiveness(user, 0.5 * user, truth, GROUPS.expression) < 0.1


def test_variance_jitter_lip_sync_and_diversity():
    t = np.arange(100, dtype=np.float64)
    ramp = np.stack([t, t, 2 * t, t], axis=1)
    assert jitter(ramp, (0, 1, 2, 3)) == pytest.approx(0.0)  # constant velocity: no acceleration
    zigzag = np.stack([(-1.0) ** t] * 4, axis=1)
    assert jitter(zigzag, (0,)) == pytest.approx(4.0)
    assert variance(zigzag, (0, 1)) == pytest.approx(1.0)
    energy = np.abs(np.sin(t / 5))
    motion = np.zeros((100, 4))
    motion[:, 2] = 3 * energy + 1
    assert lip_sync(motion, energy, 2) == pytest.approx(1.0)
    points = np.concatenate([np.zeros((50, 2)), np.ones((50, 2)) * 10])
    centres = kmeans(points, 2)
    assert diversity(points, centres, (0, 1)) == pytest.approx(1.0)  # two equal clusters: 1 bit
    assert diversity(points[:50], centres, (0, 1)) == pytest.approx(0.0)


def test_evaluate_builds_the_table():
    user, truth = _signals()
    energy = np.abs(truth[:, 2])
    table = evaluate([ConversationMotion(truth.copy(), truth, user, energy)], GROUPS, clusters=4)
    assert table["rPCC_pose"]["generated"] == 0
    assert table["variance_expression"]["generated"] == table["variance_expression"]["ground_truth"]
    assert table["lip_sync_pcc"]["generated"] == pytest.approx(table["lip_sync_pcc"]["ground_truth"])
    text = markdown_table(table)
    assert "| rPCC_expression |" in text and "| SID_pose |" in text
    official = evaluate([ConversationMotion(truth, truth, user)], MotionGroups.all_dims(4), clusters=4)
    assert "lip_sync_pcc" not in official
    with pytest.raises(ValueError, match="no conversations"):
        evaluate([], GROUPS)


def _nodding_listener(frames=750, seed=0):
    """The user talks 2 s, pauses 1 s, again and again; the avatar stays silent. Its pitch is
    slow sway + small noise, and in `nodding` also a 2 Hz damped nod 0.2 s into each pause."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames) / 25.0
    user_voiced = (t % 3.0) < 2.0
    avatar_voiced = np.zeros(frames, bool)
    still = 0.1 * np.sin(2 * np.pi * 0.1 * t) + 0.004 * rng.standard_normal(frames)
    nodding = still.copy()
    for start in np.flatnonzero(np.diff(user_voiced.astype(int)) == -1) + 1:
        s = np.arange(frames - start - 5) / 25.0
        nodding[start + 5 :] += 0.15 * np.sin(2 * np.pi * 2.0 * s) * np.exp(-s / 0.4)
    return user_voiced, avatar_voiced, still, nodding


def test_nod_response_tells_a_listener_who_nods_at_pauses_from_one_who_does_not():
    user_voiced, avatar_voiced, still, nodding = _nodding_listener()
    pauses = listener_pauses(user_voiced, avatar_voiced)
    assert len(pauses) == 9 and all(p % 75 == 50 for p in pauses)
    assert nod_response(nodding, pauses) > 2.5  # at most 3: one 25-frame window in every 75 frames
    assert nod_response(still, pauses) == pytest.approx(1.0, abs=0.3)
    # nods at random moments instead of pauses: no more than elsewhere
    shuffled = np.roll(nodding, 37)
    assert nod_response(shuffled, pauses) < 1.5
    # the avatar talking through the user's pause: not a listener pause
    assert listener_pauses(user_voiced, np.ones_like(avatar_voiced)) == []
    assert nod_response(nodding, []) is None
    groups = MotionGroups(pose=(0,), expression=(1,), nod=0)
    motion = lambda pitch: np.stack([pitch, np.zeros_like(pitch)], axis=1)
    side = ConversationMotion(motion(still), motion(nodding), motion(still), None, user_voiced, avatar_voiced)
    table = evaluate([side], groups, clusters=2)
    assert table["nod_response"]["generated"] < 1.3 < 2.5 < table["nod_response"]["ground_truth"]
    assert table["listener_pauses"]["generated"] == 9
    assert table["pause_locked_pitch"]["ground_truth"] > 3 * table["pause_locked_pitch_chance"]["ground_truth"]


def test_pause_lock_tells_a_response_at_the_pauses_from_one_at_random_moments():
    """The mean pitch trajectory after the pauses keeps a response that comes at a consistent
    time after them and averages away one that does not; chance is the same at random silent
    moments."""
    user_voiced, avatar_voiced, still, nodding = _nodding_listener(frames=1500)
    pauses, silent = [listener_pauses(user_voiced, avatar_voiced)], [silent_moments(avatar_voiced)]
    locked, chance = pause_lock([nodding], pauses, silent)
    assert locked > 3 * chance
    assert locked == pytest.approx(0.045, abs=0.015)  # RMS of the damped 0.15 nod over the window
    still_locked, still_chance = pause_lock([still], pauses, silent)
    assert still_locked < 0.2 * locked and still_chance < 0.2 * locked
    # the same nods at random times (each pause's nod shifted by a different amount)
    rng = np.random.default_rng(5)
    scattered = still.copy()
    for p in pauses[0]:
        start = p + int(rng.integers(-40, 40))
        s = np.arange(min(60, len(scattered) - start)) / 25.0
        scattered[start : start + len(s)] += 0.15 * np.sin(2 * np.pi * 2.0 * s) * np.exp(-s / 0.4)
    scattered_locked, _ = pause_lock([scattered], pauses, silent)
    assert scattered_locked < 0.5 * locked
    assert pause_lock([nodding], [[]], silent) is None
    # same seed, same draws: the chance level is reproducible
    assert pause_lock([nodding], pauses, silent)[1] == chance


def _dataset(root, jittery: bool, frames: int = 120):
    """Two held-out sides in the embedded avatar's space whose true motion is smooth (slow
    sines) or the same plus frame-to-frame noise."""
    from avatarforcing.engine.embedded.audio_features import LOG_MEL_DIM
    from avatarforcing.engine.training.dataset import create_dataset, write_item

    create_dataset(root, "default", LOG_MEL_DIM, 13)
    rng, noise = np.random.default_rng(3), np.random.default_rng(4)  # same conditions in both datasets
    t = np.arange(frames)[:, None] / 25.0
    for index in range(2):
        smooth = 0.3 * np.sin(2 * np.pi * (0.3 + 0.1 * np.arange(13)) * t + index)
        motion = smooth + (0.2 * noise.standard_normal(smooth.shape) if jittery else 0.0)
        tensors = {
            "avatar_audio": rng.standard_normal((frames, LOG_MEL_DIM)) * 0.1,
            "user_audio": rng.standard_normal((frames, LOG_MEL_DIM)) * 0.1,
            "avatar_motion": motion,
            "user_motion": np.roll(smooth, 7, axis=0),
            "reference": np.zeros(13),
            "avatar_energy": np.abs(rng.standard_normal(frames)),
        }
        write_item(root, f"side{index}", tensors, "heldout")
    return root


def test_eval_command_reports_generated_and_true_jitter_of_the_packaged_model(tmp_path):
    """Without --checkpoint the packaged embedded avatar is evaluated; --json holds every metric
    for the generated motion and the ground truth, and jitter tells a jittery track from a
    smooth one."""
    import io
    import json

    from avatarforcing.plugin.app.cli import run_cli
    from avatarforcing.plugin.host import build_plugin_host

    reports = {}
    for name, jittery in (("smooth", False), ("jittery", True)):
        data = _dataset(tmp_path / name, jittery)
        out, err = io.StringIO(), io.StringIO()
        argv = ["eval", "--data", str(data), "--json", str(tmp_path / f"{name}.json"), "--nfe", "3"]
        assert run_cli(argv, build_plugin_host({}), out, err) == 0, err.getvalue()
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for report in reports.values():
        for group in ("pose", "expression"):
            assert set(report[f"jitter_{group}"]) == {"generated", "ground_truth"}
    for group in ("pose", "expression"):
        smooth, jittery = (reports[n][f"jitter_{group}"]["ground_truth"] for n in ("smooth", "jittery"))
        assert jittery > 10 * smooth, (group, smooth, jittery)
        # the model's own motion does not depend on the truth it is compared with
        assert reports["smooth"][f"jitter_{group}"]["generated"] == reports["jittery"][f"jitter_{group}"]["generated"]


def test_eval_smooths_the_default_space_as_the_engine_does_unless_told_not_to(tmp_path):
    """The default engine shows its motion through `MotionSmoother`; `eval` measures that by
    default (lower jitter than the raw samples, same data and seed), and reports the smile
    mirroring PCC for the generated motion and the truth."""
    import io
    import json

    from avatarforcing.plugin.app.cli import run_cli
    from avatarforcing.plugin.host import build_plugin_host

    data = _dataset(tmp_path / "data", jittery=False)
    reports = {}
    for name, extra in (("smoothed", []), ("raw", ["--no-smoothing"])):
        out, err = io.StringIO(), io.StringIO()
        argv = ["eval", "--data", str(data), "--json", str(tmp_path / f"{name}.json"), "--nfe", "3", *extra]
        assert run_cli(argv, build_plugin_host({}), out, err) == 0, err.getvalue()
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    for group in ("pose", "expression"):
        raw, smoothed = (reports[n][f"jitter_{group}"]["generated"] for n in ("raw", "smoothed"))
        assert smoothed < 0.5 * raw, (group, raw, smoothed)
    assert set(reports["smoothed"]["smile_pcc_user"]) == {"generated", "ground_truth"}


def test_eval_samples_with_the_sessions_speak_listen_guidance_when_asked(tmp_path):
    """``--guidance voice`` switches the scales per block from the avatar's voice as a session
    does: with the listening scales set equal to the speaking ones it is the fixed guidance
    exactly; with the defaults (the avatar is silent here, so it listens throughout) it differs.
    The fixed guidance does not read the session's scales."""
    import io
    import json

    from avatarforcing.plugin.app.cli import run_cli
    from avatarforcing.plugin.host import build_plugin_host

    data = _dataset(tmp_path / "data", jittery=False)

    def report(name: str, *options: str, guidance: str = "fixed") -> dict:
        out, err = io.StringIO(), io.StringIO()
        argv = [*options, "eval", "--data", str(data), "--json", str(tmp_path / f"{name}.json"), "--nfe", "3"]
        assert run_cli([*argv, "--guidance", guidance], build_plugin_host({}), out, err) == 0, err.getvalue()
        return json.loads((tmp_path / f"{name}.json").read_text())

    listen_as_speak = ("--set", "session.listen_a_cfg=2.0", "--set", "session.listen_u_cfg=1.0")
    fixed = report("fixed")
    assert report("fixed_session", "--set", "session.listen_u_cfg=3.0") == fixed
    assert report("voice_same", *listen_as_speak, guidance="voice") == fixed
    listening = report("voice", guidance="voice")
    assert listening["jitter_pose"]["generated"] != fixed["jitter_pose"]["generated"]
    assert listening["jitter_pose"]["ground_truth"] == fixed["jitter_pose"]["ground_truth"]
