"""Face crop of the portrait and of user-video frames, as the official preprocessing does
(portraits, and videos with one square for the whole clip), with mediapipe's bundled detector (see ``face_detection``).

Geometry, from a face box ``(x1, y1, x2, y2)``:

1. half sizes ``bsy = int((y2-y1)/2)``, ``bsx = int((x2-x1)/2)``; centre
   ``my = int((y1+y2)/2)``, ``mx = int((x1+x2)/2)``;
2. ``bs = int(max(bsy, bsx) * (1 + pad_ratio))`` (pad_ratio 1: the box is doubled);
3. the square ``[mx-bs, mx+bs) x [my-bs, my+bs)`` clipped to the image, then re-centred:
   with the clipped size ``bw x bh`` the centre becomes ``(x1 + bw//2, y1 + bh//2)`` and the
   half side ``min(bw, bh)//2``;
4. that square is resized to ``S x S`` with INTER_AREA when ``m = 360/h < 1`` (h = image
   height), else INTER_CUBIC (the official code picks the interpolation from the scale of its
   360-px detection copy, not from the crop's own scale; we keep that rule).

For a video the per-frame half sizes and centres are averaged (float means over the
frames with a detection) and one square is used for the whole clip. Frames without a detection
are left out of the average; a clip with none raises :class:`NoFaceError`.

Differences from the official code: the detector (BlazeFace instead of SFD; detection on the
full-resolution image instead of a 360-px copy) and, therefore, slightly different boxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avatarforcing.integrations.face_detection import FaceBox, FaceDetector, NoFaceError, _check_rgb
from avatarforcing.integrations.media import iter_video_frames

DETECTION_HEIGHT = 360  # the official detector's working height; sets the interpolation rule


@dataclass(frozen=True)
class FaceGeometry:
    """Half sizes and centre of a face box in pixels (ints for one box, floats for means)."""

    half_y: float
    half_x: float
    center_y: float
    center_x: float


@dataclass(frozen=True)
class CropSquare:
    """A square ``[y, y+side) x [x, x+side)`` inside the image it was computed for."""

    x: int
    y: int
    side: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The square's pixels (a view) of an ``[H, W, C]`` image."""
        return image[self.y : self.y + self.side, self.x : self.x + self.side]


@dataclass(frozen=True)
class VideoCropPlan:
    """One crop for a whole clip: the square, the resize interpolation (a cv2 flag), and how
    many of the scanned frames had a face."""

    square: CropSquare
    interpolation: int
    frames_with_face: int
    frames_scanned: int


def face_geometry(box: FaceBox) -> FaceGeometry:
    """Integer half sizes and centre of a face box."""
    return FaceGeometry(
        half_y=int((box.y2 - box.y1) / 2),
        half_x=int((box.x2 - box.x1) / 2),
        center_y=int((box.y1 + box.y2) / 2),
        center_x=int((box.x1 + box.x2) / 2),
    )


def crop_square(geometry: FaceGeometry, width: int, height: int, pad_ratio: float = 1.0) -> CropSquare:
    """The padded square around ``geometry``, clipped to a ``width x height``
    image and re-centred. Raises ValueError when nothing of it lies inside the image."""
    half = int(max(geometry.half_y, geometry.half_x) * (1.0 + pad_ratio))
    mx, my = int(geometry.center_x), int(geometry.center_y)
    x1, x2 = max(0, mx - half), min(width, mx + half)
    y1, y2 = max(0, my - half), min(height, my + half)
    bw, bh = x2 - x1, y2 - y1
    side_half = min(bw, bh) // 2
    if side_half <= 0:
        raise ValueError(f"face crop square is empty for a {width}x{height} image: {geometry}")
    cx, cy = x1 + bw // 2, y1 + bh // 2
    return CropSquare(x=cx - side_half, y=cy - side_half, side=2 * side_half)


def resize_interpolation(image_height: int) -> int:
    """Resampling filter: INTER_AREA when ``360 / image_height < 1``, else INTER_CUBIC."""
    return cv2.INTER_AREA if DETECTION_HEIGHT / image_height < 1 else cv2.INTER_CUBIC


def apply_crop(image: np.ndarray, square: CropSquare, size: int, interpolation: int) -> np.ndarray:
    """Cut ``square`` out of an RGB uint8 image and resize it to ``[size, size, 3]`` uint8."""
    return cv2.resize(np.ascontiguousarray(square.apply(image)), (size, size), interpolation=interpolation)


# ----------------------------------------------------------------------------------- portrait


def load_image_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 ``[H, W, 3]``; ValueError/FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode: also works for non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"cannot decode image file {path} (not an image OpenCV can read)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop_portrait(
    image_rgb: np.ndarray,
    size: int,
    *,
    source: str = "<image>",
    pad_ratio: float = 1.0,
    detector: FaceDetector | None = None,
) -> tuple[np.ndarray, FaceBox]:
    """Face crop of a portrait: returns ``(crop [size, size, 3] uint8, face box)``.

    Raises :class:`NoFaceError` naming ``source`` when no face is found. A detector is created
    (and closed) when none is given.
    """
    image = _check_rgb(image_rgb)
    own = detector is None
    detector = detector or FaceDetector()
    try:
        box = detector.detect(image)
    finally:
        if own:
            detector.close()
    if box is None:
        raise NoFaceError(source, f"detector {detector.model!r}, min score {detector.min_score}")
    height, width = image.shape[:2]
    square = crop_square(face_geometry(box), width, height, pad_ratio)
    return apply_crop(image, square, size, resize_interpolation(height)), box


def crop_portrait_file(path: str | Path, size: int, **kwargs) -> tuple[np.ndarray, FaceBox]:
    """:func:`crop_portrait` of an image file; errors name the file."""
    return crop_portrait(load_image_rgb(path), size, source=str(path), **kwargs)


# -------------------------------------------------------------------------------------- video


def plan_video_crop(
    frames: Iterable[np.ndarray],
    *,
    source: str = "<video>",
    pad_ratio: float = 1.0,
    detector: FaceDetector | None = None,
    detect_every: int = 1,
) -> VideoCropPlan:
    """Detect faces in the frames (every ``detect_every``-th one), average half sizes and
    centres over the detections, and build one crop square for the clip.

    Raises :class:`NoFaceError` naming ``source`` when no scanned frame has a face, and
    ValueError when there are no frames or their sizes differ.
    """
    if detect_every < 1:
        raise ValueError(f"detect_every must be >= 1, got {detect_every}")
    own = detector is None
    detector = detector or FaceDetector()
    geometries: list[FaceGeometry] = []
    frame_size: tuple[int, int] | None = None
    scanned = 0
    try:
        for index, frame in enumerate(frames):
            frame = _check_rgb(frame)
            if frame_size is None:
                frame_size = frame.shape[:2]
            elif frame.shape[:2] != frame_size:
                raise ValueError(f"frame {index} of {source} is {frame.shape[:2]}, expected {frame_size}")
            if index % detect_every:
                continue
            scanned += 1
            box = detector.detect(frame)
            if box is not None:
                geometries.append(face_geometry(box))
    finally:
        if own:
            detector.close()
    if frame_size is None:
        raise ValueError(f"no frames in {source}")
    if not geometries:
        raise NoFaceError(
            source, f"none of {scanned} scanned frames; detector {detector.model!r}, min score {detector.min_score}"
        )
    mean = FaceGeometry(
        half_y=float(np.mean([g.half_y for g in geometries])),
        half_x=float(np.mean([g.half_x for g in geometries])),
        center_y=float(np.mean([g.center_y for g in geometries])),
        center_x=float(np.mean([g.center_x for g in geometries])),
    )
    height, width = frame_size
    return VideoCropPlan(
        square=crop_square(mean, width, height, pad_ratio),
        interpolation=resize_interpolation(height),
        frames_with_face=len(geometries),
        frames_scanned=scanned,
    )


def apply_video_crop(frames: Iterable[np.ndarray], plan: VideoCropPlan, size: int) -> Iterator[np.ndarray]:
    """Crop and resize every frame with one plan; yields ``[size, size, 3]`` uint8."""
    for frame in frames:
        yield apply_crop(_check_rgb(frame), plan.square, size, plan.interpolation)


def crop_video_frames(
    frames: Sequence[np.ndarray], size: int, *, source: str = "<video>", **plan_kwargs
) -> tuple[np.ndarray, VideoCropPlan]:
    """In-memory video crop: ``(crops [N, size, size, 3] uint8, plan)``."""
    plan = plan_video_crop(frames, source=source, **plan_kwargs)
    return np.stack(list(apply_video_crop(frames, plan, size))), plan


def crop_video_file(path: str | Path, size: int, **plan_kwargs) -> tuple[VideoCropPlan, Iterator[np.ndarray]]:
    """Crop of a video file in two passes (detect, then crop), without holding the clip in
    memory: returns the plan and an iterator of ``[size, size, 3]`` uint8 crops, one per frame.
    Errors name the file."""
    plan = plan_video_crop((rgb for _, _, rgb in iter_video_frames(path)), source=str(path), **plan_kwargs)
    crops = apply_video_crop((rgb for _, _, rgb in iter_video_frames(path)), plan, size)
    return plan, crops


def centre_square(image: np.ndarray, size: int) -> np.ndarray:
    """The centred ``min(H, W)`` square of an RGB uint8 image, resized to ``[size, size, 3]``
    (same interpolation rule as the face crop)."""
    height, width = image.shape[:2]
    side = min(height, width)
    square = CropSquare(x=(width - side) // 2, y=(height - side) // 2, side=side)
    return apply_crop(image, square, size, resize_interpolation(height))
