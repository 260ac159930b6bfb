"""What the face-parameter renderers (``puppet``, ``portrait``) read from a motion block."""

from __future__ import annotations

import numpy as np

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.types import MotionBlock
from avatarforcing.schemas.motion_space import MOTION_SPACE


def block_face_params(block: MotionBlock, renderer: str) -> np.ndarray:
    """``block.latents`` as float32 ``[num_frames, 13]`` motion-space parameters; a block of
    another shape (e.g. the official engine's latents) is a `PluginError` naming `renderer`."""
    latents = block.latents
    if hasattr(latents, "detach"):  # a torch tensor
        latents = latents.detach().cpu().numpy()
    array = np.asarray(latents, dtype=np.float32) if latents is not None else None
    if array is None or array.shape != (block.num_frames, MOTION_SPACE.dim):
        shape = None if array is None else tuple(array.shape)
        raise PluginError(
            f"renderer {renderer!r}: block {block.index} latents must be default-motion-space "
            f"parameters of shape ({block.num_frames}, {MOTION_SPACE.dim}), got {shape}; "
            "use it with the default avatar engine"
        )
    return array
