"""The default avatar's audio conditions: one row per 40 ms video frame and party.

A row is the frame's `log_mel_features` (80 values) and, for a model trained with it, the
party's voicing history after it (`voicing.py`, 4 values: 84 in all). The model's audio width
says which (`audio_width`). `audio_conditions` is the offline function (datasets, evaluation);
`StreamingAudioConditions` the streaming one (the engine), equal to it for any split of the
samples, with a state that can be saved and restored.
"""

from __future__ import annotations

import math

import numpy as np

from avatarforcing.engine.embedded.audio_features import LOG_MEL_DIM, StreamingLogMel, log_mel_features
from avatarforcing.engine.embedded.voicing import (
    VOICING_DIM,
    StreamingVoicingHistory,
    VoicingState,
    with_voicing_history,
)

DEFAULT_VOICING = False  # the layout of the packaged model, of new models and of new datasets
WIDTHS = {LOG_MEL_DIM: False, LOG_MEL_DIM + VOICING_DIM: True}  # audio width -> with voicing history


def audio_width(voicing: bool) -> int:
    """The width of a row: 84 with the voicing history, 80 without."""
    return LOG_MEL_DIM + VOICING_DIM if voicing else LOG_MEL_DIM


def has_voicing(width: int) -> bool:
    """Whether a model of audio width `width` takes the voicing history; ValueError for a width
    that is neither layout."""
    if width not in WIDTHS:
        raise ValueError(
            f"the default avatar's audio rows are {LOG_MEL_DIM} (log-mel) or "
            f"{LOG_MEL_DIM + VOICING_DIM} (log-mel + voicing history) wide, not {width}"
        )
    return WIDTHS[width]


def audio_conditions(samples: np.ndarray, voicing: bool) -> np.ndarray:
    """16 kHz mono float32 (n,) -> ``[n // 640, audio_width(voicing)]`` float32."""
    rows = log_mel_features(samples)
    return with_voicing_history(rows) if voicing else rows


class StreamingAudioConditions:
    """Incremental `audio_conditions` of one party: `push(samples)` -> rows of the frames
    completed so far."""

    def __init__(self, voicing: bool) -> None:
        self._mel = StreamingLogMel()
        self._history = StreamingVoicingHistory() if voicing else None

    def reset(self) -> None:
        self._mel.reset()
        if self._history is not None:
            self._history.reset()

    def push(self, samples: np.ndarray) -> np.ndarray:
        rows = self._mel.push(samples)
        if self._history is None:
            return rows
        return np.concatenate((rows, self._history.push(rows)), axis=1).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Everything the next `push` depends on, as arrays: ``mel_history`` float64 [240],
        ``mel_pending`` float64 [k < 640] and, with the voicing history, ``voicing`` float64
        [3] (noise floor or NaN before the first row, frames since voiced, stretch)."""
        history, pending = self._mel.get_state()
        state = {"mel_history": history, "mel_pending": pending}
        if self._history is not None:
            v = self._history.state
            state["voicing"] = np.array([math.nan if v.floor is None else v.floor, v.since, v.stretch], np.float64)
        return state

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Resume from `get_state`'s arrays; ValueError when they do not fit this layout."""
        self._mel.set_state(state["mel_history"], state["mel_pending"])
        if self._history is None:
            if "voicing" in state:
                raise ValueError("saved audio state has a voicing history; this model takes log-mel rows only")
            return
        voicing = np.asarray(state.get("voicing", np.zeros(0)), np.float64)
        if voicing.shape != (3,):
            raise ValueError(f"saved audio state needs a voicing history of shape (3,), got {voicing.shape}")
        floor = None if math.isnan(voicing[0]) else float(voicing[0])
        self._history.state = VoicingState(floor, int(voicing[1]), int(voicing[2]))
