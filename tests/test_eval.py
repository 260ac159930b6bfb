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
    markdown_table,
    reactiveness,
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
