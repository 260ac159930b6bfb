"""The default motion space and the procedural face drawing."""

from __future__ import annotations

import numpy as np
import pytest

from avatarforcing.engine.embedded.drawing import LOOKS, FaceLook, composite, draw_face, get_look
from avatarforcing.schemas.motion_space import MOTION_SPACE

SIZE = (256, 256)


def face(**values) -> np.ndarray:
    return draw_face(MOTION_SPACE.from_dict(values), SIZE, "classic")


def test_motion_space_layout_matches_the_shared_spec():
    assert MOTION_SPACE.names == (
        "yaw",
        "pitch",
        "roll",
        "shift_x",
        "shift_y",
        "jaw_open",
        "smile",
        "pucker",
        "blink_left",
        "blink_right",
        "brow_raise",
        "gaze_x",
        "gaze_y",
    )
    assert MOTION_SPACE.dim == 13
    assert MOTION_SPACE.ranges[0] == (-35.0, 35.0) and MOTION_SPACE.ranges[1] == (-25.0, 25.0)
    assert MOTION_SPACE.ranges[3] == (-0.2, 0.2) and MOTION_SPACE.ranges[10] == (-1.0, 1.0)
    assert MOTION_SPACE.pose_indices == (0, 1, 2, 3, 4)
    assert MOTION_SPACE.expression_indices == tuple(range(5, 13))
    assert MOTION_SPACE.jaw_index == 5 and MOTION_SPACE.blink_indices == (8, 9)
    assert len(MOTION_SPACE.units) == 13 and MOTION_SPACE.units[0] == "degrees"


def test_normalize_keeps_zero_neutral_and_round_trips():
    rng = np.random.default_rng(0)
    params = rng.uniform(MOTION_SPACE.lows, MOTION_SPACE.highs, size=(4, 7, 13)).astype(np.float32)
    normalized = MOTION_SPACE.normalize(params)
    assert normalized.dtype == np.float32 and normalized.shape == params.shape
    assert np.abs(normalized).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(MOTION_SPACE.denormalize(normalized), params, rtol=1e-6, atol=1e-6)
    assert not MOTION_SPACE.normalize(MOTION_SPACE.neutral()).any()
    assert MOTION_SPACE.normalize(MOTION_SPACE.from_dict({"yaw": 35, "jaw_open": 0.5}))[[0, 5]].tolist() == [1.0, 0.5]


def test_motion_space_rejects_bad_input_clearly():
    with pytest.raises(ValueError, match=r"shape \[\.\.\., 13\]"):
        MOTION_SPACE.normalize(np.zeros(12))
    with pytest.raises(KeyError, match="unknown motion parameter 'mouth'"):
        MOTION_SPACE.from_dict({"mouth": 1.0})
    assert MOTION_SPACE.clip(np.full(13, 100.0)).tolist() == list(MOTION_SPACE.highs)
    assert MOTION_SPACE.to_dict(MOTION_SPACE.from_dict({"smile": 0.25}))["smile"] == 0.25


def test_draw_face_is_rgba_with_a_transparent_background():
    for name in LOOKS:
        image = draw_face(MOTION_SPACE.neutral(), (200, 160), name)
        assert image.dtype == np.uint8 and image.shape == (200, 160, 4)
        alpha = image[..., 3]
        assert alpha[0, 0] == alpha[0, -1] == 0 and alpha[:20, :20].max() == 0
        assert alpha[100, 80] == 255  # the face's centre is opaque
        edge_values = np.unique(alpha)
        assert len(edge_values) > 10  # anti-aliased edges, not a hard 0/255 mask
    rgb = composite(draw_face(MOTION_SPACE.neutral(), SIZE), (0, 177, 64))
    assert rgb.shape == SIZE + (3,) and tuple(rgb[0, 0]) == (0, 177, 64)


def _dark_pixels(image: np.ndarray, box: tuple[slice, slice]) -> int:
    region = image[box].astype(int)
    return int(((region[..., :3].sum(axis=-1) < 300) & (region[..., 3] == 255)).sum())


MOUTH = (slice(135, 182), slice(95, 161))
EYES = (slice(85, 125), slice(50, 206))


def test_jaw_open_draws_a_taller_darker_mouth_and_a_longer_chin():
    closed, opened = face(), face(jaw_open=1.0)
    assert _dark_pixels(opened, MOUTH) > 3 * _dark_pixels(closed, MOUTH) + 100
    column = SIZE[1] // 2
    assert np.nonzero(opened[:, column, 3] == 255)[0].size >= np.nonzero(closed[:, column, 3] == 255)[0].size
    chin = lambda im: np.nonzero(im[: int(SIZE[0] * 0.8), column, 3] > 0)[0]
    assert chin(opened).max() >= chin(closed).max()


def test_blinks_smile_brows_gaze_and_pose_change_the_drawing():
    neutral = face()
    both = face(blink_left=1.0, blink_right=1.0)

    def white(im, cols=EYES[1]):
        return int((im[EYES[0], cols, :3].min(axis=-1) > 245).sum())

    assert white(neutral) > 60 and white(both) < white(neutral) * 0.1
    left_only = face(blink_left=1.0)  # the avatar's left eye is on the image right
    right_half, left_half = slice(SIZE[1] // 2, None), slice(0, SIZE[1] // 2)
    assert white(left_only, right_half) < white(neutral, right_half) * 0.2
    assert white(left_only, left_half) > white(neutral, left_half) * 0.8
    for values in ({"smile": 1.0}, {"pucker": 1.0}, {"brow_raise": 1.0}, {"brow_raise": -1.0}, {"gaze_x": 1.0}):
        assert np.abs(face(**values).astype(int) - neutral).sum() > 2000, values

    def features_x(image):
        _ys, xs = np.nonzero(image[EYES][..., :3].min(axis=-1) > 245)
        return xs.mean()

    assert features_x(face(yaw=30)) > features_x(neutral) + 5  # yaw + turns to the image right
    eye_row = lambda im: np.nonzero((im[60:160, 50:206, :3].min(axis=-1) > 245).any(axis=1))[0].mean()
    assert eye_row(face(pitch=20)) > eye_row(neutral) + 3  # pitch + = chin down
    head_x = lambda im: np.nonzero(im[60, :, 3] > 0)[0].mean()
    assert head_x(face(shift_x=0.2)) > head_x(neutral) + 10
    rolled = face(roll=20)
    head_top_x = lambda im: np.nonzero(im[40, :, 3] > 0)[0].mean()
    assert head_top_x(rolled) > head_top_x(neutral) + 5  # roll + = top of the head to the image right


def test_draw_face_errors_and_custom_looks():
    with pytest.raises(ValueError, match=r"shape \(13,\)"):
        draw_face(np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        draw_face(np.full(13, np.nan))
    with pytest.raises(KeyError, match="unknown face look 'neon'; known: classic, night, mono"):
        get_look("neon")
    with pytest.raises(ValueError, match="hair_style"):
        FaceLook(**{**LOOKS["classic"].__dict__, "hair_style": "mohawk"})
    custom = FaceLook(**{**LOOKS["classic"].__dict__, "name": "red", "skin": (255, 0, 0)})
    image = draw_face(MOTION_SPACE.neutral(), SIZE, custom)
    assert tuple(image[172, 128, :3]) == (255, 0, 0)  # the chin, below the mouth
    extreme = draw_face(np.full(13, 1e6, np.float32), SIZE)  # clipped to the ranges, still drawn
    assert extreme[..., 3].max() == 255
