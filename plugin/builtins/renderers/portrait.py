"""Built-in plugin ``portrait``: animate the user's own photo with the default motion space.

- Renderer **``portrait``**: ``MotionBlock.latents`` is ``float32 [num_frames, 13]``,
  denormalized parameters of the default motion space (`avatarforcing.schemas.motion_space`), as
  for ``puppet``; each row becomes a frame of the session's portrait
  (``[session] portrait``) moved by `avatarforcing.engine.embedded.portrait_rig.PortraitRig`.
  The photo is the rest pose: all-zero parameters show it unchanged. Frames are RGB (the photo's
  own background filled in behind the moving head, or a solid colour) or RGBA
  (``background = "transparent"``, alpha = the person), and carry the parameters in
  ``frame.metadata["motion"]`` like ``puppet``'s.
- The portrait is prepared once in `open` (face landmarks, person matte, background fill, mesh:
  about 0.7 s the first time in a process, 0.2 s after) and kept by its pixels' SHA-256 in memory
  (`PortraitCache`) and, with ``cache_dir``, as an analysis file on disk.
- A portrait that cannot be animated (unreadable, no face, face too small, head turned too far)
  raises `PluginError` with one line naming the file and what to do.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarforcing.engine.embedded.portrait_rig import PortraitRig, PortraitRigError, RigConfig
from avatarforcing.integrations.portrait_analysis import (
    PortraitAnalysis,
    PortraitError,
    analyse_portrait,
    frame_portrait,
    image_digest,
    load_analysis,
    load_portrait_image,
    save_analysis,
)
from avatarforcing.plugin.api.errors import PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.types import Frame, MotionBlock, OptionSpec, RendererSpec, SessionInfo
from avatarforcing.plugin.builtins.renderers.face_params import block_face_params
from avatarforcing.schemas.motion_space import MOTION_SPACE

log = logging.getLogger(__name__)

BACKGROUNDS: dict[str, tuple[int, int, int] | None] = {
    "original": None,  # the photo's background, filled in behind the person (RGB)
    "transparent": None,  # RGBA output
    "green": (0, 177, 64),
    "blue": (0, 71, 187),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
CACHE_SUBDIR = "portraits"


def rig_config(background: str) -> RigConfig:
    """The rig settings for a `background` option value."""
    colour = BACKGROUNDS[background]
    return RigConfig(background=background if colour is None else colour)


@dataclass
class PreparedPortrait:
    """A portrait ready to render: the `rig` (output size), the `analysis` it came from, where it
    came from (`cache`: ``"memory"``, ``"disk"`` or ``""`` when computed now) and how long
    preparing took (`seconds`)."""

    rig: PortraitRig
    analysis: PortraitAnalysis
    cache: str
    seconds: float


class PortraitCache:
    """Prepared portraits by content.

    In memory: the last `capacity` rigs, keyed by ``(pixel SHA-256, output size, background)``.
    On disk (when `directory` is given): each photo's analysis (landmarks, matte, downscaled
    image) as ``DIRECTORY/<sha256>.npz``, so that a new process skips mediapipe. Not
    thread-safe.
    """

    def __init__(self, directory: str | Path | None = None, capacity: int = 4) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.capacity = max(int(capacity), 1)
        self._rigs: OrderedDict[tuple, tuple[PortraitRig, PortraitAnalysis]] = OrderedDict()

    def _analysis(self, image: np.ndarray, digest: str, source: str, notes: list[str]) -> tuple[PortraitAnalysis, str]:
        path = self.directory / f"{digest}.npz" if self.directory else None
        if path is not None and path.is_file():
            stored = load_analysis(path)
            if stored is not None and stored.digest == digest:
                stored.source = source
                return stored, "disk"
        analysis = analyse_portrait(image, source=source)
        analysis.warnings[:0] = [n for n in notes if n not in analysis.warnings]
        if path is not None:
            try:
                save_analysis(analysis, path)
            except OSError as error:  # a read-only cache must not stop the session
                log.warning("portrait: cannot write the cache file %s (%s)", path, error)
        return analysis, ""

    def prepare(
        self, portrait: str | Path | np.ndarray, size: tuple[int, int], background: str = "original"
    ) -> PreparedPortrait:
        """The rig of `portrait` (a file path or an RGB ``uint8 [H, W, 3]`` array) for output
        frames of `size` ``(height, width)``. Raises `PortraitError` (a portrait that cannot be
        animated) naming the file."""
        start = time.perf_counter()
        if isinstance(portrait, (str, Path)):
            source = str(portrait)
            image, notes = load_portrait_image(portrait)
        else:
            source, image, notes = "<portrait image>", np.asarray(portrait), []
        digest = image_digest(image)
        key = (digest, tuple(int(s) for s in size), background)
        if key in self._rigs:
            self._rigs.move_to_end(key)
            rig, analysis = self._rigs[key]
            return PreparedPortrait(rig, analysis, "memory", time.perf_counter() - start)
        analysis, cache = self._analysis(image, digest, source, notes)
        framed_image, landmarks, matte = frame_portrait(analysis, size)
        try:
            rig = PortraitRig(framed_image, landmarks, matte, rig_config(background))
        except PortraitRigError as error:
            raise PortraitError(f"{source}: {error}; use a larger, frontal photo") from error
        self._rigs[key] = (rig, analysis)
        while len(self._rigs) > self.capacity:
            self._rigs.popitem(last=False)
        return PreparedPortrait(rig, analysis, cache, time.perf_counter() - start)


def _cache_directory(option: str) -> Path | None:
    if not option:
        return None
    if option == "auto":
        from avatarforcing.plugin.app.paths import user_cache_dir

        return user_cache_dir() / "avatarforcing" / CACHE_SUBDIR
    return Path(option).expanduser()


class PortraitRenderer:
    """`Renderer` of default-motion-space blocks into frames of the session's portrait."""

    def __init__(self, background: str, size: int, cache_dir: str) -> None:
        self.background = background
        self.size = size
        self.cache = PortraitCache(_cache_directory(cache_dir))
        self.prepared: PreparedPortrait | None = None
        self._fps = 25

    def open(self, session: SessionInfo) -> None:
        self._fps = session.fps
        frame_size = (self.size, self.size) if self.size else (int(session.frame_size[0]), int(session.frame_size[1]))
        path = session.portrait_path
        portrait: str | np.ndarray | None = path if path and Path(path).expanduser().is_file() else None
        if portrait is None and session.portrait is not None:
            portrait = session.portrait
        if portrait is None:
            where = f"{path!r} is not a file" if path else "no portrait is set"
            raise PluginError(
                f"renderer 'portrait': {where}; set [session] portrait = \"photo.jpg\" (or --set session.portrait=...)"
            )
        if isinstance(portrait, str):
            portrait = str(Path(portrait).expanduser())
        try:
            self.prepared = self.cache.prepare(portrait, frame_size, self.background)
        except PortraitError as error:
            raise PluginError(f"renderer 'portrait': {error}") from error
        for warning in self.prepared.analysis.warnings:
            log.warning("portrait %s: %s", self.prepared.analysis.source, warning)
        log.info(
            "portrait %s ready in %.2f s%s",
            self.prepared.analysis.source,
            self.prepared.seconds,
            f" (from the {self.prepared.cache} cache)" if self.prepared.cache else "",
        )

    def _params(self, block: MotionBlock) -> np.ndarray:
        return block_face_params(block, "portrait")

    def render(self, block: MotionBlock) -> list[Frame]:
        if self.prepared is None:
            raise PluginError("renderer 'portrait': render() before open()")
        rig = self.prepared.rig
        frames = []
        for k, params in enumerate(self._params(block)):
            clipped = MOTION_SPACE.clip(params)
            index = block.first_frame + k
            frames.append(
                Frame(
                    image=rig.render(clipped),
                    index=index,
                    timestamp=index / self._fps,
                    metadata={"motion": MOTION_SPACE.to_dict(clipped)},
                )
            )
        return frames

    def close(self) -> None:
        self.prepared = None


PORTRAIT = RendererSpec(
    name="portrait",
    description="the session's portrait photo, animated by the default avatar's motion parameters (CPU)",
    factory=PortraitRenderer,
    options=(
        OptionSpec(
            "background",
            str,
            "original",
            "original (the photo's background, filled in behind the head), transparent (RGBA frames) or a solid colour",
            choices=tuple(BACKGROUNDS),
        ),
        OptionSpec(
            "size", int, 0, "square frame side in pixels; 0 = the session's frame size", minimum=0, maximum=4096
        ),
        OptionSpec(
            "cache_dir",
            str,
            "",
            "where prepared portraits are kept between runs: a directory, 'auto' (the per-user cache "
            "directory) or '' (memory only)",
        ),
    ),
)


@hookimpl
def register_renderers() -> list[RendererSpec]:
    return [PORTRAIT]


__all__ = ["BACKGROUNDS", "PORTRAIT", "PortraitCache", "PortraitRenderer", "PreparedPortrait", "rig_config"]
