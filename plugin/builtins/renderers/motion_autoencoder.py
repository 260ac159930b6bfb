"""Built-in plugin ``motion_autoencoder``: the ``motion-autoencoder`` renderer.

Decodes the official engine's motion latents into RGB frames with the model's own
motion-autoencoder decoder: style ``s_r + r_d[t]`` of the session's identity (the portrait
encoded when the session's engine was built), then the flow-warping synthesis network. Frames map from [-1, 1] to ``uint8`` with the fixed per-frame mapping
(`avatarforcing.integrations.media.to_uint8_frame`), never the official per-clip min-max.

It needs ``session.engine``: an `avatarforcing.engine.official.pipeline.AvatarPipeline` (anything with
its ``decode(block)``), which live sessions and offline renders put there. Blocks are decoded
``batch_frames`` frames at a time to bound memory at 512².
"""

from __future__ import annotations

from typing import Any

from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import Frame, MotionBlock, OptionSpec, RendererSpec, SessionInfo

NAME = "motion-autoencoder"


class MotionAutoencoderRenderer:
    """`Renderer` for the official motion latents (``MotionBlock.latents``: a tensor
    ``(num_frames, 512)``); returns ``uint8`` RGB frames of the model's size."""

    def __init__(self, batch_frames: int) -> None:
        self.batch_frames = batch_frames
        self._engine: Any = None
        self._fps = 25

    def open(self, session: SessionInfo) -> None:
        engine = session.engine
        if engine is None or not callable(getattr(engine, "decode", None)):
            raise PluginError(
                f"renderer {NAME!r} needs the official engine in session.engine (an "
                "AvatarPipeline); this session has none — pick another renderer"
            )
        self._engine = engine
        self._fps = session.fps

    def render(self, block: MotionBlock) -> list[Frame]:
        if self._engine is None:
            raise PluginError(f"renderer {NAME!r}: render() before open()")
        import torch

        from avatarforcing.engine.stream import LatentBlock
        from avatarforcing.integrations.media import to_uint8_frame

        latents = block.latents
        if not isinstance(latents, torch.Tensor) or latents.dim() != 2 or latents.shape[0] != block.num_frames:
            shape = tuple(getattr(latents, "shape", ()))
            raise PluginError(
                f"renderer {NAME!r}: block {block.index} latents must be a tensor "
                f"({block.num_frames}, 512), got {type(latents).__name__} {shape}"
            )
        frames: list[Frame] = []
        for offset in range(0, block.num_frames, self.batch_frames):
            part = latents[offset : offset + self.batch_frames]
            images = to_uint8_frame(self._engine.decode(LatentBlock(block.first_frame + offset, part[None])))
            for k, image in enumerate(images):
                index = block.first_frame + offset + k
                frames.append(Frame(image=image, index=index, timestamp=index / self._fps))
        return frames

    def close(self) -> None:
        self._engine = None


MOTION_AUTOENCODER = RendererSpec(
    name=NAME,
    description="the official motion-autoencoder decoder: motion latents + portrait identity -> RGB",
    factory=MotionAutoencoderRenderer,
    options=(OptionSpec("batch_frames", int, 10, "frames decoded per decoder call", minimum=1, maximum=1000),),
)


@hookimpl
def register_renderers() -> list[RendererSpec]:
    return [MOTION_AUTOENCODER]
