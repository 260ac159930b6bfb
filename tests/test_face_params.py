"""Face parameters from video with mediapipe FaceMesh (real model, real sample video)."""

from __future__ import annotations

import numpy as np
import pytest

from avatarforcing.integrations.face_params import FaceParamsExtractor, params_from_landmarks
from avatarforcing.integrations.media import iter_video_frames
from avatarforcing.schemas.motion_filter import OneEuroConfig, OneEuroFilter
from avatarforcing.schemas.motion_space import MOTION_SPACE

pytest.importorskip("mediapipe")
FRAMES = 200


@pytest.fixture(scope="module")
def user_frames(samples_dir):
    frames = []
    for index, _, frame in iter_video_frames(samples_dir / "user.mp4"):
        if index >= FRAMES:
            break
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def raw_and_filtered(user_frames):
    out = {}
    for use_filter in (False, True):
        with FaceParamsExtractor(filter=use_filter) as extractor:
            out[use_filter] = extractor.extract_many(user_frames)
    return out


def test_user_video_gives_in_range_params_on_most_frames(raw_and_filtered):
    params, found = raw_and_filtered[True]
    assert params.shape == (FRAMES, MOTION_SPACE.dim) and params.dtype == np.float32
    assert found.mean() > 0.95
    assert np.all(params >= MOTION_SPACE.lows - 1e-6) and np.all(params <= MOTION_SPACE.highs + 1e-6)
    p = {name: params[found, i] for i, name in enumerate(MOTION_SPACE.names)}
    # a person talking, facing the camera: moderate pose, the mouth moves, the eyes blink
    assert abs(np.median(p["yaw"])) < 15 and abs(np.median(p["pitch"])) < 12 and abs(np.median(p["roll"])) < 12
    assert p["jaw_open"].max() - p["jaw_open"].min() > 0.3
    assert p["jaw_open"].std() > 0.05 and p["yaw"].std() > 1.0
    assert (p["blink_left"].max() > 0.5) and (p["blink_right"].max() > 0.5)


def test_filter_clearly_reduces_jitter(raw_and_filtered):
    raw, _ = raw_and_filtered[False]
    filtered, _ = raw_and_filtered[True]
    jitter = lambda x: np.abs(np.diff(MOTION_SPACE.normalize(x), axis=0)).mean(axis=0)
    raw_j, filt_j = jitter(raw), jitter(filtered)
    assert filt_j.mean() < 0.8 * raw_j.mean()
    pose = list(MOTION_SPACE.pose_indices[:3])
    assert np.all(filt_j[pose] < 0.8 * raw_j[pose])
    # the filter smooths, it does not flatten: the signal keeps its range
    assert np.ptp(filtered[:, 0]) > 0.6 * np.ptp(raw[:, 0])


def test_no_face_gives_none_and_resets_the_filter(user_frames):
    with FaceParamsExtractor() as extractor:
        blank = np.full((240, 320, 3), 128, np.uint8)
        assert extractor.extract(blank) is None
        first = extractor.extract(user_frames[0])
        assert first is not None and first.shape == (MOTION_SPACE.dim,)
        assert extractor.extract(np.zeros((240, 320, 3), np.uint8)) is None
        params, found = extractor.extract_many([blank, user_frames[1]])
        assert found.tolist() == [False, True] and not params[0].any()
        with pytest.raises(ValueError, match=r"RGB uint8 \[H, W, 3\]"):
            extractor.extract(np.zeros((10, 10), np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        extractor.extract(user_frames[0])


def test_landmark_geometry_maps_to_pose_signs():
    # a synthetic frontal "face": symmetric points; rotating it about the vertical axis gives yaw
    rng = np.random.default_rng(1)
    base = rng.normal(size=(478, 3)) * 5.0 + [256.0, 256.0, 0.0]
    base[33], base[263] = [206, 236, 0], [306, 236, 0]  # eye outer corners
    base[234], base[454] = [176, 256, 0], [336, 256, 0]  # cheeks
    base[10], base[152] = [256, 156, 0], [256, 376, 0]  # forehead, chin
    frontal = params_from_landmarks(base, (512, 512))
    assert frontal[0] == pytest.approx(0.0, abs=0.5) and frontal[2] == pytest.approx(0.0, abs=0.5)

    def rotated(matrix):
        return (base - [256, 256, 0]) @ matrix.T + [256, 256, 0]

    a = np.radians(20)
    # turn to the person's left: the nose (towards the camera, -z) moves to the image right
    yaw = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    assert params_from_landmarks(rotated(yaw), (512, 512))[0] == pytest.approx(20.0, abs=1.0)
    roll = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    assert params_from_landmarks(rotated(roll), (512, 512))[2] == pytest.approx(20.0, abs=1.0)
    with pytest.raises(ValueError, match=r"\(478, 3\)"):
        params_from_landmarks(base[:468], (512, 512))


def test_one_euro_filter_smooths_noise_and_follows_steps():
    config = OneEuroConfig(min_cutoff_hz=(1.0,) * MOTION_SPACE.dim, beta=1.0)
    noisy = OneEuroFilter(config)
    rng = np.random.default_rng(0)
    out = np.array([noisy(rng.normal(0, 0.05, MOTION_SPACE.dim), t / 25) for t in range(200)])
    assert out[50:].std() < 0.5 * 0.05
    step = OneEuroFilter(config)
    values = [step(np.full(MOTION_SPACE.dim, 0.0 if t < 10 else 1.0), t / 25)[0] for t in range(30)]
    assert values[9] == 0.0 and values[-1] > 0.9  # follows a step within 20 frames
    step.reset()
    assert step(np.full(MOTION_SPACE.dim, 5.0), 0.0)[0] == 5.0
