"""The One-Euro filter over motion-space vectors (Casiez, Roussel & Vogel, CHI 2012).

A causal low-pass whose cutoff rises with the signal's speed: slow drifts and jitter are
smoothed hard, fast moves (a blink, a nod, the jaw on a syllable) pass with little lag. Used
where motion in the 13-parameter space (`motion_space.MOTION_SPACE`, normalized units) is
tracked (the face tracker) or generated (the embedded avatar's output), so both sides filter the
same way. State is explicit (`OneEuroFilter` holds the last value, speed and time); `reset()`
forgets it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from avatarforcing.schemas.motion_space import MOTION_SPACE


@dataclass(frozen=True)
class OneEuroConfig:
    """One-Euro filter settings, in normalized motion units (see `MOTION_SPACE.normalize`).

    `min_cutoff_hz[i]`: cutoff at rest per parameter (lower = smoother, more lag); `beta`:
    how fast the cutoff rises with speed; `d_cutoff_hz`: cutoff of the speed estimate.
    """

    min_cutoff_hz: tuple[float, ...] = (1.0, 1.0, 1.0, 0.8, 0.8, 3.0, 1.5, 1.5, 4.0, 4.0, 1.5, 2.0, 2.0)
    beta: float = 1.5
    d_cutoff_hz: float = 1.0

    def __post_init__(self) -> None:
        if len(self.min_cutoff_hz) != MOTION_SPACE.dim or min(self.min_cutoff_hz) <= 0:
            raise ValueError(f"min_cutoff_hz needs {MOTION_SPACE.dim} positive values")
        if self.beta < 0 or self.d_cutoff_hz <= 0:
            raise ValueError("beta must be >= 0 and d_cutoff_hz > 0")


@dataclass
class OneEuroFilter:
    """Vectorised One-Euro filter over ``[P]`` vectors; `reset()` forgets the history."""

    config: OneEuroConfig = field(default_factory=OneEuroConfig)
    _value: np.ndarray | None = None
    _speed: np.ndarray | None = None
    _time: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, value: np.ndarray, time: float) -> np.ndarray:
        value = np.asarray(value, np.float64)
        if self._value is None or self._time is None or time <= self._time:
            self._value, self._speed, self._time = value, np.zeros_like(value), time
            return value.copy()
        dt = time - self._time
        speed = (value - self._value) / dt
        a_d = self._alpha(self.config.d_cutoff_hz, dt)
        self._speed = a_d * speed + (1.0 - a_d) * self._speed
        cutoff = np.asarray(self.config.min_cutoff_hz) + self.config.beta * np.abs(self._speed)
        a = self._alpha(cutoff, dt)
        self._value = a * value + (1.0 - a) * self._value
        self._time = time
        return self._value.copy()

    def reset(self) -> None:
        self._value = self._speed = self._time = None

    def state(self) -> dict[str, np.ndarray | float | None]:
        """Everything the filter remembers (last value, speed estimate, time): small, for saving
        a stream's state; `load_state` restores it."""
        return {"value": self._value, "speed": self._speed, "time": self._time}

    def load_state(self, state: dict[str, np.ndarray | float | None]) -> None:
        self._value, self._speed, self._time = state["value"], state["speed"], state["time"]
