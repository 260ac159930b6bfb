"""The embedded avatar's output smoothing (engine/embedded/smoothing.py): causal, streaming
equals one-shot, state that can be saved and restored, and the group cutoffs doing their job
(the jaw follows a step within a few frames, pose is smoothed hard)."""

from __future__ import annotations

import numpy as np

from avatarforcing.engine.embedded.smoothing import MotionSmoother, SmoothingConfig
from avatarforcing.schemas.motion_space import MOTION_SPACE

JAW, YAW = MOTION_SPACE.names.index("jaw_open"), MOTION_SPACE.names.index("yaw")


def _noisy(frames: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(frames)[:, None] / 25.0
    return (0.5 * np.sin(2 * np.pi * 0.3 * t + np.arange(13)) + 0.2 * rng.standard_normal((frames, 13))).astype(
        np.float32
    )


def test_streaming_in_any_chunks_equals_one_shot_and_state_round_trips():
    motion = _noisy()
    whole = MotionSmoother()(motion, 0)
    chunked, smoother = [], MotionSmoother()
    for start in range(0, len(motion), 7):
        chunked.append(smoother(motion[start : start + 7], start))
    np.testing.assert_array_equal(np.concatenate(chunked), whole)

    first = MotionSmoother()
    first(motion[:100], 0)
    resumed = MotionSmoother()
    resumed.load_state(first.state())
    np.testing.assert_array_equal(resumed(motion[100:], 100), whole[100:])

    first.reset()
    np.testing.assert_array_equal(first(motion, 0), whole)  # afresh after reset


def test_smoothing_lowers_jitter_keeps_the_jaw_fast_and_can_be_off():
    motion = _noisy()
    smoothed = MotionSmoother()(motion, 0)

    def jitter(x):
        return np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean(0)

    ratio = jitter(smoothed) / jitter(motion)
    assert ratio[JAW] < 0.7 and np.delete(ratio, JAW).max() < 0.5, ratio  # the jaw is filtered lightly
    step = np.zeros((20, 13), np.float32)
    step[5:] = 0.1  # a small move (a large one raises the cutoff: One-Euro follows fast moves)
    out = MotionSmoother()(step, 0) / 0.1
    assert out[8, JAW] > 0.9  # three frames after the step the jaw is nearly there
    assert out[8, YAW] < 0.5  # the head is not
    np.testing.assert_array_equal(MotionSmoother(SmoothingConfig(enabled=False))(motion, 0), motion)
