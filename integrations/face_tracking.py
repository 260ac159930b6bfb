"""Streaming face tracker for live video: a steady face crop, frame by frame.

A crop that follows every detection jitters (detections wobble by a few pixels from frame to
frame); the official crop averaged over the whole clip cannot stream. The tracker:

1. **searches** (runs the detector on every frame) until a face is found, then **locks** onto
   it: the crop's centre and half size are set from that detection;
2. while locked, re-detects every ``detect_every`` frames and moves the locked box toward each
   new detection with a **soft dead-band**: a change smaller than the dead-band (a fraction of
   the face's half size) is ignored, and only the excess beyond it is followed, by an
   exponential-smoothing factor ``smoothing`` per detection. A jump of more than
   ``snap_fraction`` half sizes (the face moved far, a different window) re-locks at once;
3. when a detection misses, it re-detects on every following frame; after ``max_missed``
   consecutive misses the lock is dropped and the tracker reports "no face", so the session
   can use the null user-motion condition. Until then it keeps the last crop (brief dropouts
   such as a hand over the face do not flicker the condition).

The crop square is derived from the tracked box with the same geometry as the offline crop
(``face_crop.crop_square``: doubled box, clipped, re-centred) and resized with the same
interpolation rule. All tracking state lives in :class:`TrackerState`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avatarforcing.integrations.face_crop import CropSquare, FaceGeometry, apply_crop, crop_square, resize_interpolation
from avatarforcing.integrations.face_detection import FaceBox, FaceDetector, _check_rgb


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings (frames are the video's frames, sizes are in face half sizes)."""

    detect_every: int = 5  # frames between detections while locked (1: every frame)
    max_missed: int = 3  # consecutive missed detections before "no face"
    smoothing: float = 0.3  # fraction of the beyond-dead-band change followed per detection
    center_deadband: float = 0.05  # centre changes below this x half size are ignored
    size_deadband: float = 0.05  # relative half-size changes below this are ignored
    snap_fraction: float = 1.0  # a centre jump beyond this x half size re-locks at once
    pad_ratio: float = 1.0  # crop padding, as in the offline crop (box doubled)

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.max_missed < 1:
            raise ValueError(f"max_missed must be >= 1, got {self.max_missed}")
        if not 0.0 < self.smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {self.smoothing}")
        for name in ("center_deadband", "size_deadband", "pad_ratio"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.snap_fraction <= 0:
            raise ValueError(f"snap_fraction must be > 0, got {self.snap_fraction}")


@dataclass
class TrackerState:
    """Everything the tracker remembers between frames (pixels of the current frame size)."""

    frame_index: int = 0  # index of the next frame to process
    frame_size: tuple[int, int] = (0, 0)  # (width, height) of the frames being tracked
    locked: bool = False
    center_x: float = 0.0
    center_y: float = 0.0
    half_size: float = 0.0  # half of the face box's larger side
    missed: int = 0  # consecutive missed detections while locked
    frames_since_detection: int = 0
    detections_run: int = 0


@dataclass(frozen=True)
class TrackResult:
    """Outcome for one frame. ``crop`` is ``[size, size, 3]`` uint8 when ``has_face``;
    ``detection`` is the raw box when the detector ran on this frame and found a face."""

    frame_index: int
    has_face: bool
    crop: np.ndarray | None
    square: CropSquare | None
    detector_ran: bool
    detection: FaceBox | None = field(default=None)


def _beyond(delta: float, band: float) -> float:
    """The part of ``delta`` that lies outside ``[-band, band]`` (soft dead-band)."""
    if delta > band:
        return delta - band
    if delta < -band:
        return delta + band
    return 0.0


class FaceTracker:
    """Feed frames in order with :meth:`update`; read :attr:`state`. ``size`` is the crop's
    side in pixels. A detector is created (and closed by :meth:`close`) when none is given."""

    def __init__(self, size: int, config: TrackerConfig | None = None, detector: FaceDetector | None = None) -> None:
        if size <= 0:
            raise ValueError(f"crop size must be positive, got {size}")
        self.size = int(size)
        self.config = config or TrackerConfig()
        self._owns_detector = detector is None
        self.detector = detector or FaceDetector()
        self.state = TrackerState()

    def reset(self) -> None:
        """Forget the face (the next frame starts a search)."""
        self.state = TrackerState(frame_index=self.state.frame_index)

    def update(self, frame_rgb: np.ndarray) -> TrackResult:
        """Track one RGB uint8 ``[H, W, 3]`` frame and return its crop (or "no face")."""
        frame = _check_rgb(frame_rgb)
        state, cfg = self.state, self.config
        height, width = frame.shape[:2]
        if state.frame_size != (width, height):
            self.reset()
            state = self.state
            state.frame_size = (width, height)

        due = not state.locked or state.missed > 0 or state.frames_since_detection + 1 >= cfg.detect_every
        detection = None
        if due:
            detection = self.detector.detect(frame)
            state.detections_run += 1
            state.frames_since_detection = 0
            if detection is not None:
                self._absorb(detection)
                state.missed = 0
            elif state.locked:
                state.missed += 1
                if state.missed >= cfg.max_missed:
                    state.locked = False
                    state.missed = 0
        else:
            state.frames_since_detection += 1

        index = state.frame_index
        state.frame_index += 1
        if not state.locked:
            return TrackResult(index, False, None, None, due, detection)
        square = self._square(width, height)
        crop = apply_crop(frame, square, self.size, resize_interpolation(height))
        return TrackResult(index, True, crop, square, due, detection)

    def _absorb(self, box: FaceBox) -> None:
        state, cfg = self.state, self.config
        cx, cy = (box.x1 + box.x2) / 2.0, (box.y1 + box.y2) / 2.0
        half = max(box.x2 - box.x1, box.y2 - box.y1) / 2.0
        jump = np.hypot(cx - state.center_x, cy - state.center_y)
        if not state.locked or jump > cfg.snap_fraction * state.half_size:
            state.center_x, state.center_y, state.half_size = cx, cy, half
            state.locked = True
            return
        band = cfg.center_deadband * state.half_size
        state.center_x += cfg.smoothing * _beyond(cx - state.center_x, band)
        state.center_y += cfg.smoothing * _beyond(cy - state.center_y, band)
        state.half_size += cfg.smoothing * _beyond(half - state.half_size, cfg.size_deadband * state.half_size)

    def _square(self, width: int, height: int) -> CropSquare:
        state = self.state
        geometry = FaceGeometry(
            half_y=state.half_size, half_x=state.half_size, center_y=state.center_y, center_x=state.center_x
        )
        return crop_square(geometry, width, height, self.config.pad_ratio)

    def close(self) -> None:
        if self._owns_detector:
            self.detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
