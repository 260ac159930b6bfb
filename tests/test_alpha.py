"""RGBA frames (the puppet renderer's transparent background) reach outputs without alpha."""

from __future__ import annotations

import numpy as np
import pytest

from avatarforcing.integrations.alpha import flatten_rgba


def test_rgb_passes_through_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    assert flatten_rgba(image) is image


def test_rgba_is_composited_over_the_background():
    image = np.zeros((2, 2, 4), np.uint8)
    image[0, 0] = (200, 100, 50, 255)  # opaque: its own colour
    image[0, 1] = (200, 100, 50, 0)  # transparent: the background
    image[1, 0] = (255, 255, 255, 128)  # half: in between
    out = flatten_rgba(image, background=(0, 0, 0))
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (200, 100, 50)
    assert tuple(out[0, 1]) == (0, 0, 0)
    assert tuple(out[1, 0]) == (128, 128, 128)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4, 3), np.float32)]
)
def test_bad_images_are_refused_clearly(bad):
    with pytest.raises(ValueError, match="RGB/RGBA uint8"):
        flatten_rgba(bad)
