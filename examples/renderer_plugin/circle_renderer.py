"""An avatarforcing renderer plugin in one module: a circle whose radius follows jaw_open.

Works with the default avatar, whose motion blocks carry ``latents`` of shape
``[num_frames, 13]`` (denormalized parameters of the default motion space).
"""

import cv2
import numpy as np

from avatarforcing.plugin import Frame, OptionSpec, RendererSpec, hookimpl
from avatarforcing.schemas.motion_space import MOTION_SPACE


class CircleRenderer:
    """Renderer protocol: open(session), render(block) -> frames, close()."""

    def __init__(self, colour: str):  # one keyword argument per OptionSpec
        self.colour = tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))  # "rrggbb" -> RGB

    def open(self, session):
        self.height, self.width = session.frame_size
        self.fps = session.fps

    def render(self, block):
        frames = []
        for k, params in enumerate(np.asarray(block.latents, dtype=np.float32)):
            jaw = float(params[MOTION_SPACE.jaw_index])  # 0 (closed) .. 1 (wide open)
            image = np.zeros((self.height, self.width, 3), np.uint8)
            radius = int(min(self.height, self.width) * (0.1 + 0.3 * jaw))
            cv2.circle(image, (self.width // 2, self.height // 2), radius, self.colour, -1, cv2.LINE_AA)
            index = block.first_frame + k
            frames.append(Frame(image=image, index=index, timestamp=index / self.fps))
        return frames

    def close(self):
        pass


def _hex_colour(value):
    ok = len(value) == 6 and all(c in "0123456789abcdefABCDEF" for c in value)
    return None if ok else "expected six hex digits, e.g. ff8800"


@hookimpl
def register_renderers():
    return [
        RendererSpec(
            "circle",
            "a circle whose radius follows the mouth opening",
            CircleRenderer,
            options=(OptionSpec("colour", str, "ff8800", "fill colour as rrggbb", check=_hex_colour),),
        )
    ]
