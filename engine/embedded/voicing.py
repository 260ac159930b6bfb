"""Voicing history: what a party's voice did over the last second or two, in every frame.

A listener's nod answers a *transition* (speech, then a pause), but the generator sees each
condition frame only within a few frames of its own. These four channels carry the recent past
into every frame, computed causally from the party's log-mel rows:

- ``voiced``: 1 while the party's voice is heard, else 0;
- ``since``: time since the party's voice was last heard, ``min(frames, 25) / 25`` (0 while
  speaking, 1 after a second or more of silence, and before the party ever spoke);
- ``stretch``: length of the party's latest stretch of speech (pauses under `BRIDGED_GAP`
  frames bridged), ``min(frames, 50) / 50`` — it holds its length through the pause after it;
- ``quiet``: the same time as ``since`` on a longer scale, ``min(frames, 100) / 100``.

Voicing is the row's mean level above a causal noise floor (`FLOOR_RISE` per frame upward,
down at once, starting at most at `FLOOR_START`: a stream may begin mid-sentence) by
`VOICED_ABOVE_FLOOR`. Contract: rows ``[T, 80]`` float32 in, ``[T, 4]``
float32 out; `StreamingVoicingHistory` pushed any split of the rows gives exactly the
rows of `voicing_history` on all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarforcing.engine.embedded.audio_features import LOG_MEL_DIM, VOICED_ABOVE_FLOOR

VOICING_DIM = 4  # a multiple of the condition fusion's heads, as the model's audio width must be
SINCE_CAP = 25  # frames (1 s): a nod comes 0.1-0.4 s after a pause and lasts about a second
QUIET_CAP = 100  # frames (4 s)
STRETCH_CAP = 50  # frames (2 s)
BRIDGED_GAP = 5  # frames (200 ms): shorter silences are inside a stretch of speech
FLOOR_START = -0.7  # the level of about -55 dBFS of white noise
FLOOR_RISE = 0.002  # log-mel units per frame (0.5 per 10 s): the floor follows a rising noise slowly


@dataclass
class VoicingState:
    """Everything the next row depends on: the noise `floor` (None before the first row), the
    frames `since` the last voiced one (counted up to `QUIET_CAP`), and the `stretch` of
    speech that ended there."""

    floor: float | None = None
    since: int = QUIET_CAP
    stretch: int = 0


class StreamingVoicingHistory:
    """Incremental `voicing_history`: `push(rows [k, 80])` -> ``[k, 4]``."""

    def __init__(self) -> None:
        self.state = VoicingState()

    def reset(self) -> None:
        self.state = VoicingState()

    def push(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != LOG_MEL_DIM:
            raise ValueError(f"voicing history needs log-mel rows [k, {LOG_MEL_DIM}], got shape {rows.shape}")
        out = np.empty((len(rows), VOICING_DIM), np.float32)
        st = self.state
        for i, level in enumerate(rows.astype(np.float64).mean(axis=1)):
            st.floor = min(level, FLOOR_START if st.floor is None else st.floor + FLOOR_RISE)
            voiced = level > st.floor + VOICED_ABOVE_FLOOR
            if voiced:
                st.stretch = st.stretch + st.since + 1 if st.since <= BRIDGED_GAP else 1
                st.since = 0
            else:
                st.since = min(st.since + 1, QUIET_CAP)
            out[i] = (
                float(voiced),
                min(st.since, SINCE_CAP) / SINCE_CAP,
                min(st.stretch, STRETCH_CAP) / STRETCH_CAP,
                st.since / QUIET_CAP,
            )
        return out


def voicing_history(rows: np.ndarray) -> np.ndarray:
    """Log-mel rows ``[T, 80]`` of one party's whole track -> voicing history ``[T, 4]``."""
    return StreamingVoicingHistory().push(rows)


def with_voicing_history(rows: np.ndarray) -> np.ndarray:
    """``[T, 80]`` log-mel rows -> ``[T, 84]``: the rows and their voicing history."""
    return np.concatenate((rows, voicing_history(rows)), axis=1).astype(np.float32)
