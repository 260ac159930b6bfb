"""Guidance that follows the avatar's voice, block by block, for sampling a recorded conversation.

A live session switches the 3-way guidance between speaking and listening scales from the
avatar's voice activity before each block (the session's speak/listen policy). To sample a
recorded conversation the way a session would, `VoicedGuidance` maps a block to its scales from
the avatar's voice activity per frame, known up front: speaking scales when the avatar's voice
was heard in the last `release_frames` frames up to the block's end (the session's release
time; one voiced frame switches to speaking, as the session's 40 ms attack), listening scales
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarforcing.engine.sampler import GuidanceScales


@dataclass(frozen=True)
class VoicedGuidance:
    """Scales per block from `voiced` (bool [T], the avatar's voice activity per frame)."""

    voiced: np.ndarray
    speak: GuidanceScales
    listen: GuidanceScales
    release_frames: int = 5  # 200 ms at 25 fps

    def __call__(self, stop: int) -> GuidanceScales:
        """Scales for the block whose frames end before frame `stop` (its audio is known up to
        there when it is generated)."""
        start = max(0, stop - max(1, self.release_frames))
        return self.speak if np.asarray(self.voiced[start:stop], bool).any() else self.listen
