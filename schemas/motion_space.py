"""The default avatar's interpretable motion space: 13 named face parameters.

A motion vector is ``float32`` ``[..., P]`` with ``P = 13`` parameters in this order
(denormalized units, the units people and renderers use):

====  ===========  ===================  ===========  =========================================
 idx  name         unit                 range        meaning
====  ===========  ===================  ===========  =========================================
   0  yaw          degrees              [-35, 35]    + = the avatar turns to its left
   1  pitch        degrees              [-25, 25]    + = chin down (nod)
   2  roll         degrees              [-20, 20]    + = head tilts towards its left shoulder
   3  shift_x      face widths          [-0.2, 0.2]  + = head moves to the image right
   4  shift_y      face widths          [-0.2, 0.2]  + = head moves down in the image
   5  jaw_open     fraction             [0, 1]       1 = mouth wide open
   6  smile        fraction             [0, 1]       1 = full smile
   7  pucker       fraction             [0, 1]       1 = lips fully pursed ("oo")
   8  blink_left   fraction             [0, 1]       1 = avatar's left eye closed
   9  blink_right  fraction             [0, 1]       1 = avatar's right eye closed
  10  brow_raise   fraction             [-1, 1]      + = raised, - = frown
  11  gaze_x       fraction             [-1, 1]      + = looks to the image right
  12  gaze_y       fraction             [-1, 1]      + = looks down
====  ===========  ===================  ===========  =========================================

The model works in *normalized* units: each parameter divided by the largest magnitude of its
range (``max(|low|, |high|)``), so every value lies in [-1, 1] and **0 stays neutral** in both
unit systems (an all-zero vector is the neutral face, which is also the dataset's "no face"
null condition).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MotionSpace:
    """Names, units and ranges of the motion parameters, plus unit conversions.

    `ranges[i]` is ``(low, high)`` in denormalized units; `scales[i] = max(|low|, |high|)` is
    the divisor used by `normalize`.
    """

    names: tuple[str, ...]
    units: tuple[str, ...]
    ranges: tuple[tuple[float, float], ...]
    pose_indices: tuple[int, ...]
    expression_indices: tuple[int, ...]
    jaw_index: int
    blink_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.units) != n or len(self.ranges) != n:
            raise ValueError("names, units and ranges must have the same length")
        for name, (low, high) in zip(self.names, self.ranges):
            if not low < high:
                raise ValueError(f"parameter {name!r}: range low {low} must be < high {high}")

    @property
    def dim(self) -> int:
        """Number of parameters P (the default model's dim_w)."""
        return len(self.names)

    @property
    def lows(self) -> np.ndarray:
        """``float32 [P]`` lower bounds (denormalized)."""
        return np.array([r[0] for r in self.ranges], dtype=np.float32)

    @property
    def highs(self) -> np.ndarray:
        """``float32 [P]`` upper bounds (denormalized)."""
        return np.array([r[1] for r in self.ranges], dtype=np.float32)

    @property
    def scales(self) -> np.ndarray:
        """``float32 [P]`` divisors mapping denormalized to normalized units."""
        return np.array([max(abs(lo), abs(hi)) for lo, hi in self.ranges], dtype=np.float32)

    def index(self, name: str) -> int:
        """Position of parameter `name`; raises `KeyError` listing the valid names."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown motion parameter {name!r}; known: {', '.join(self.names)}") from None

    def _check(self, params: np.ndarray) -> np.ndarray:
        array = np.asarray(params, dtype=np.float32)
        if array.ndim == 0 or array.shape[-1] != self.dim:
            raise ValueError(
                f"motion parameters must have shape [..., {self.dim}] ({', '.join(self.names)}), "
                f"got {tuple(array.shape)}"
            )
        return array

    def normalize(self, params: np.ndarray) -> np.ndarray:
        """Denormalized ``[..., P]`` -> normalized ``float32 [..., P]`` (each in [-1, 1] when
        the input is in range; 0 stays 0)."""
        return self._check(params) / self.scales

    def denormalize(self, params: np.ndarray) -> np.ndarray:
        """Normalized ``[..., P]`` -> denormalized ``float32 [..., P]`` (inverse of
        `normalize`)."""
        return self._check(params) * self.scales

    def clip(self, params: np.ndarray) -> np.ndarray:
        """Denormalized ``[..., P]`` clipped to the ranges, ``float32``."""
        return np.clip(self._check(params), self.lows, self.highs)

    def neutral(self) -> np.ndarray:
        """The neutral face: ``float32 zeros [P]``."""
        return np.zeros(self.dim, dtype=np.float32)

    def to_dict(self, params: np.ndarray) -> dict[str, float]:
        """One denormalized vector ``[P]`` -> ``{name: float}`` (JSON-serialisable)."""
        array = self._check(params)
        if array.ndim != 1:
            raise ValueError(f"to_dict takes one vector of shape [{self.dim}], got {array.shape}")
        return {name: float(value) for name, value in zip(self.names, array)}

    def from_dict(self, values: Mapping[str, float]) -> np.ndarray:
        """``{name: value}`` -> ``float32 [P]``; missing names are neutral (0), unknown names
        raise `KeyError`."""
        out = self.neutral()
        for name, value in values.items():
            out[self.index(name)] = float(value)
        return out


MOTION_SPACE = MotionSpace(
    names=(
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
    ),
    units=(
        "degrees",
        "degrees",
        "degrees",
        "face widths",
        "face widths",
        "fraction",
        "fraction",
        "fraction",
        "fraction",
        "fraction",
        "fraction",
        "fraction",
        "fraction",
    ),
    ranges=(
        (-35.0, 35.0),
        (-25.0, 25.0),
        (-20.0, 20.0),
        (-0.2, 0.2),
        (-0.2, 0.2),
        (0.0, 1.0),
        (0.0, 1.0),
        (0.0, 1.0),
        (0.0, 1.0),
        (0.0, 1.0),
        (-1.0, 1.0),
        (-1.0, 1.0),
        (-1.0, 1.0),
    ),
    pose_indices=(0, 1, 2, 3, 4),
    expression_indices=(5, 6, 7, 8, 9, 10, 11, 12),
    jaw_index=5,
    blink_indices=(8, 9),
)
"""The default avatar's motion space (P = 13)."""

__all__ = ["MOTION_SPACE", "MotionSpace"]
