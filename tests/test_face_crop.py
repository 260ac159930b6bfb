"""Face detection and the official-style face crop of portraits and videos."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarforcing.integrations.face_crop import (
    CropSquare,
    FaceGeometry,
    crop_portrait,
    crop_portrait_file,
    crop_square,
    crop_video_file,
    crop_video_frames,
    face_geometry,
    load_image_rgb,
    plan_video_crop,
    resize_interpolation,
)
from avatarforcing.integrations.face_detection import (
    FaceBox,
    FaceDetector,
    FaceDetectorUnavailable,
    NoFaceError,
)
from avatarforcing.integrations.media import iter_video_frames

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"shared samples not found at {SAMPLES}")
try:
    import mediapipe  # noqa: F401

    HAVE_MEDIAPIPE = True
except ImportError:
    HAVE_MEDIAPIPE = False
needs_mediapipe = pytest.mark.skipif(
    not HAVE_MEDIAPIPE, reason="mediapipe not installed (pip install 'avatarforcing[face]')"
)


@pytest.fixture(scope="module")
def detector():
    if not HAVE_MEDIAPIPE:
        pytest.skip("mediapipe not installed (pip install 'avatarforcing[face]')")
    with FaceDetector() as det:
        yield det


@pytest.fixture(scope="module")
def user_frames():
    if not SAMPLES.is_dir():
        pytest.skip(f"shared samples not found at {SAMPLES}")
    return [rgb for index, _, rgb in iter_video_frames(SAMPLES / "user.mp4") if index < 40]


# ------------------------------------------------------------------------- geometry (no detector)


def test_face_geometry_and_square_inside_image():
    box = FaceBox(100, 120, 200, 240, score=0.9)
    geometry = face_geometry(box)
    assert geometry == FaceGeometry(half_y=60, half_x=50, center_y=180, center_x=150)
    # bs = 120: [30, 270) x [60, 300), fully inside 640x480
    assert crop_square(geometry, 640, 480) == CropSquare(x=30, y=60, side=240)
    # pad_ratio 0.5: bs = 90
    assert crop_square(geometry, 640, 480, pad_ratio=0.5) == CropSquare(x=60, y=90, side=180)


def test_square_clipped_at_the_edge_is_recentred():
    geometry = face_geometry(FaceBox(0, 100, 101, 201, score=0.9))  # bs = 100, centre (50, 150)
    # x [-50, 150) -> [0, 150); y [50, 250): bw=150, bh=200 -> centre (75, 150), half 75
    assert crop_square(geometry, 640, 480) == CropSquare(x=0, y=75, side=150)
    # a box hanging over the bottom-right corner
    square = crop_square(face_geometry(FaceBox(580, 430, 700, 530, score=0.9)), 640, 480)
    assert square.x >= 0 and square.y >= 0
    assert square.x + square.side <= 640 and square.y + square.side <= 480
    with pytest.raises(ValueError, match="empty"):
        crop_square(FaceGeometry(10, 10, 900, 900), 640, 480)


def test_resize_interpolation_follows_the_360px_rule():
    assert resize_interpolation(512) == cv2.INTER_AREA
    assert resize_interpolation(361) == cv2.INTER_AREA
    assert resize_interpolation(360) == cv2.INTER_CUBIC
    assert resize_interpolation(240) == cv2.INTER_CUBIC


def test_square_apply_cuts_the_right_pixels():
    image = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    np.testing.assert_array_equal(CropSquare(x=2, y=3, side=4).apply(image), image[3:7, 2:6])


def test_image_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image_rgb(tmp_path / "nope.jpg")
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not_an_image.png"):
        load_image_rgb(bad)


def test_missing_mediapipe_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(FaceDetectorUnavailable, match=r"avatarforcing\[face\]"):
        FaceDetector()


def test_detector_argument_validation():
    with pytest.raises(ValueError, match="model"):
        FaceDetector(model="huge")
    with pytest.raises(ValueError, match="min_score"):
        FaceDetector(min_score=1.5)


# ------------------------------------------------------------------------------- portrait


@needs_samples
@pytest.mark.parametrize("size", [512, 256])
def test_portrait_crop_finds_the_face(detector, size):
    crop, box = crop_portrait_file(SAMPLES / "rumi.jpg", size, detector=detector)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    assert box.score > 0.5
    # the face of the 512x512 sample portrait is large and central
    assert 150 < box.width < 350 and 150 < box.height < 350
    assert abs((box.x1 + box.x2) / 2 - 256) < 40 and abs((box.y1 + box.y2) / 2 - 256) < 60
    # the crop is the doubled box around the face, clipped and re-centred, then resized
    square = crop_square(face_geometry(box), 512, 512)
    assert square.side > 1.5 * max(box.width, box.height)
    image = load_image_rgb(SAMPLES / "rumi.jpg")
    expected = cv2.resize(np.ascontiguousarray(square.apply(image)), (size, size), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, expected)


@needs_samples
@needs_mediapipe
def test_portrait_crop_without_a_given_detector():
    crop, box = crop_portrait(load_image_rgb(SAMPLES / "rumi.jpg"), 128, source="rumi.jpg")
    assert crop.shape == (128, 128, 3) and box.score > 0.5


def test_blank_image_raises_no_face_naming_the_source(detector):
    with pytest.raises(NoFaceError, match="blank_portrait.png") as info:
        crop_portrait(np.full((300, 400, 3), 128, np.uint8), 64, source="blank_portrait.png", detector=detector)
    assert info.value.source == "blank_portrait.png"


def test_blank_image_file_raises_no_face_naming_the_file(tmp_path, detector):
    path = tmp_path / "empty_wall.png"
    cv2.imwrite(str(path), np.full((240, 320, 3), 200, np.uint8))
    with pytest.raises(NoFaceError, match="empty_wall.png"):
        crop_portrait_file(path, 64, detector=detector)


@needs_mediapipe
def test_small_face_in_a_screen_grab_is_found_by_auto(user_frames):
    """'auto' falls back to the full-range model for a small face in a 1280x720 capture."""
    tile = cv2.resize(user_frames[0], (240, 240), interpolation=cv2.INTER_AREA)
    canvas = np.full((720, 1280, 3), 40, np.uint8)
    canvas[60:300, 900:1140] = tile
    with FaceDetector() as fresh:
        assert fresh.active_model == "short"
        box = fresh.detect(canvas)
        assert box is not None
        assert 900 <= (box.x1 + box.x2) / 2 <= 1140 and 60 <= (box.y1 + box.y2) / 2 <= 300
        assert fresh.active_model == "full"  # sticks with the model that found the face
    with FaceDetector(model="short") as short_range:
        assert short_range.detect(canvas) is None
    with pytest.raises(RuntimeError, match="closed"):
        short_range.detect(canvas)


# ---------------------------------------------------------------------------------- video


@needs_mediapipe
def test_video_crop_of_user_frames(user_frames):
    with FaceDetector(model="short") as detector:
        crops, plan = crop_video_frames(user_frames, 128, source="user.mp4", detector=detector)
        assert crops.shape == (len(user_frames), 128, 128, 3) and crops.dtype == np.uint8
        assert plan.frames_with_face == plan.frames_scanned == len(user_frames)
        assert plan.interpolation == cv2.INTER_AREA
        # one square for the clip, built from the mean half sizes and centres
        geometries = [face_geometry(detector.detect(frame)) for frame in user_frames]
        mean = FaceGeometry(
            *(
                float(np.mean([getattr(g, name) for g in geometries]))
                for name in ("half_y", "half_x", "center_y", "center_x")
            )
        )
        assert plan.square == crop_square(mean, 512, 512)
        expected = cv2.resize(
            np.ascontiguousarray(plan.square.apply(user_frames[7])), (128, 128), interpolation=cv2.INTER_AREA
        )
        np.testing.assert_array_equal(crops[7], expected)


def test_video_crop_skips_faceless_frames_and_fails_without_faces(detector, user_frames):
    blank = np.zeros_like(user_frames[0])
    _, plan = crop_video_frames([blank, user_frames[0], blank, user_frames[1]], 64, source="mixed", detector=detector)
    assert (plan.frames_with_face, plan.frames_scanned) == (2, 4)
    with pytest.raises(NoFaceError, match="black_clip.mp4"):
        plan_video_crop([blank] * 3, source="black_clip.mp4", detector=detector)
    with pytest.raises(ValueError, match="no frames"):
        plan_video_crop([], source="empty", detector=detector)


@needs_samples
def test_video_file_crop_streams_every_frame(detector):
    plan, crops = crop_video_file(SAMPLES / "user.mp4", 64, detector=detector, detect_every=8)
    assert plan.frames_scanned == 50  # ceil(396 / 8)
    assert plan.frames_with_face >= 45
    count = 0
    for crop in crops:
        assert crop.shape == (64, 64, 3)
        count += 1
    assert count == 396
