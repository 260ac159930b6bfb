"""Alpha for outputs without an alpha channel (files, JPEG streams, windows, RGB cameras)."""

from __future__ import annotations

import numpy as np


def flatten_rgba(image: np.ndarray, background: tuple[int, int, int] = (24, 24, 28)) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` of an RGB or RGBA uint8 image: RGBA is composited over the solid
    `background` colour (outputs without an alpha channel: files, JPEG streams, windows); RGB is
    returned unchanged."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB/RGBA uint8 (h, w, 3|4) image, got {image.dtype} {image.shape}")
    if image.shape[2] == 3:
        return image
    alpha = image[..., 3:4].astype(np.uint16)
    back = np.asarray(background, np.uint16)
    mixed = (image[..., :3].astype(np.uint16) * alpha + back * (255 - alpha) + 127) // 255
    return mixed.astype(np.uint8)
