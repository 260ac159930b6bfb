"""One client's session on a serving replica, free of Ray and of the network.

`ServedSession` owns a motion engine created from the server's configuration with the
client's `Hello` settings (seed, nfe, guidance) and turns protocol messages into protocol
answers: `open()` -> `Ready` (warm-up, or a saved state restored), `tick(Tick)` -> `Blocks`
(+ a `Checkpoint` every `Hello.checkpoint_frames` input frames when the engine can save its
state), `finish()` -> the last `Blocks` and `Ended`. Its methods block (they compute): the
replica runs them on a worker thread, one call at a time per session.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avatarforcing.plugin.api.errors import AvatarForcingError
from avatarforcing.plugin.api.types import InputTick, MotionBlock, SessionInfo
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.app.serving.images import decode_image, encode_frame
from avatarforcing.plugin.app.serving.protocol import (
    Blocks,
    Checkpoint,
    Ended,
    Hello,
    ProtocolError,
    Ready,
    Tick,
)


@dataclasses.dataclass(frozen=True)
class EngineSource:
    """Where a replica's engines come from: the server's config file and ``--set`` overrides
    (``("model.engine", "default")``, ...), applied again per session with the client's settings."""

    config_file: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()

    def config_for(self, hello: Hello) -> AppConfig:
        """The effective configuration of a session; bad client settings raise ProtocolError."""
        session = [("model.seed", hello.seed), ("model.a_cfg_scale", hello.a_cfg_scale)]
        session.append(("model.u_cfg_scale", hello.u_cfg_scale))
        if hello.nfe:
            session.append(("model.nfe", hello.nfe))
        try:
            return load_config(self.config_file, [*self.overrides, *session])
        except AvatarForcingError as error:
            raise ProtocolError(f"hello: {error}") from None


def input_tick(tick: Tick) -> InputTick:
    """A wire `Tick` as the engines' `InputTick` (JPEGs decoded; parameters stay in the `Tick`)."""
    frames = [decode_image(j, "tick: a user frame") if j is not None else None for j in tick.jpegs]
    frames = frames or [None] * tick.num_frames
    return InputTick(
        first_frame=tick.first_frame,
        num_frames=tick.num_frames,
        avatar_audio=tick.avatar_audio,
        user_audio=tick.user_audio,
        user_frames=frames,
        avatar_voice=tick.avatar_voice,
    )


def extract(engine, tick: Tick):
    """`engine.extract` of a wire tick; face parameters go to engines that take them
    (``extract(tick, user_params=...)``), others get only the frames."""
    if tick.params:
        if "user_params" not in inspect.signature(engine.extract).parameters:
            raise ProtocolError("tick: this engine needs the user's frames (JPEG), not face parameters")
        return engine.extract(input_tick(tick), user_params=tick.params)
    return engine.extract(input_tick(tick))


def block_tuples(blocks: Sequence[MotionBlock]) -> list[tuple]:
    """Engine blocks as `Blocks.blocks` entries (latents as float32 arrays)."""
    out = []
    for block in blocks:
        latents = block.latents
        if hasattr(latents, "detach"):  # a torch tensor (official latents)
            latents = latents.detach().cpu().numpy()
        out.append((block.index, block.first_frame, np.asarray(latents, np.float32), dict(block.metadata)))
    return out


class ServedSession:
    """A session on a replica (see the module docstring). `replica`: the replica's id, sent in
    `Ready` (a client reports it; tests kill that replica)."""

    def __init__(self, source: EngineSource, hello: Hello, replica: str = "", host=None) -> None:
        self.hello = hello
        self.replica = replica
        self.session_id = hello.session_id or uuid.uuid4().hex
        self.config = source.config_for(hello)
        self._host = host
        self.engine = None
        self.engine_name = ""
        self.motion_space = ""
        self.next_frame = hello.next_frame
        self.next_block = hello.next_block
        self._checkpoint_at = hello.next_frame
        self._can_save = False
        self.renderer = None

    def open(self) -> Ready:
        from avatarforcing.plugin.host import build_plugin_host

        host = self._host or build_plugin_host()
        try:
            spec, self.engine = host.create_engine(self.config)
            self.engine.open(SessionInfo(self.session_id, self.config, portrait=None, offline=False))
        except AvatarForcingError as error:
            raise ProtocolError(f"the server's engine cannot start: {error}") from None
        self.engine_name, self.motion_space = spec.name, spec.motion_space
        self._can_save = callable(getattr(self.engine, "save_state", None))
        if self.hello.render:
            self.renderer = self._open_renderer(host)
        warm = np.zeros((0, 0), np.float32)
        resumed = bool(self.hello.state)
        if resumed:
            if not callable(getattr(self.engine, "load_state", None)):
                raise ProtocolError(f"engine {spec.name!r} cannot resume a saved state")
            try:
                self.engine.load_state(self.hello.state)
            except ValueError as error:
                raise ProtocolError(f"hello: {error}") from None
        warm_frame = b""
        if not resumed:
            blocks = self.engine.warm_up()
            if blocks:
                warm = block_tuples(blocks[:1])[0][2]
                if self.renderer is not None:
                    first = blocks[0]
                    one = MotionBlock(first.index, first.first_frame, 1, first.latents[:1], dict(first.metadata))
                    warm_frame = self._encoded(one)[0]
        return Ready(
            session_id=self.session_id,
            replica=self.replica,
            engine=spec.name,
            motion_space=spec.motion_space,
            first_block_frames=int(self.engine.first_block_frames),
            block_frames=int(self.engine.block_frames),
            resumed=resumed,
            checkpoints=self._can_save and self.hello.checkpoint_frames > 0,
            warm_up=warm,
            warm_up_frame=warm_frame,
        )

    def _open_renderer(self, host):
        """The renderer `Hello.render` names, opened on the session's portrait."""
        name = self.hello.render
        options = self.config.render.options if self.config.render.use == name else {}
        portrait = decode_image(self.hello.portrait, "hello: the portrait") if self.hello.portrait else None
        try:
            renderer = host.create("renderers", name, options, "render")
            renderer.open(SessionInfo(self.session_id, self.config, portrait=portrait, engine=self.engine))
        except AvatarForcingError as error:
            raise ProtocolError(f"hello: renderer {name!r}: {error}") from None
        return renderer

    def _encoded(self, block: MotionBlock) -> list[bytes]:
        frames = self.renderer.render(block)
        return [encode_frame(frame.image, self.hello.frame_format) for frame in frames]

    def tick(self, tick: Tick) -> list:
        """Blocks computed from `tick` (maybe none), then a `Checkpoint` when one is due."""
        if tick.first_frame < self.next_frame:
            raise ProtocolError(f"tick: frame {tick.first_frame} was already received (next is {self.next_frame})")
        started = time.perf_counter()
        blocks = self.engine.generate(extract(self.engine, tick))
        self.next_frame = tick.first_frame + tick.num_frames
        out: list = [self._blocks(blocks, tick.sent_at, started)]
        every = self.hello.checkpoint_frames
        if self._can_save and every > 0 and self.next_frame - self._checkpoint_at >= every:
            out.append(Checkpoint(self.next_frame, self.next_block, self.engine.save_state()))
            self._checkpoint_at = self.next_frame
        return out

    def set_guidance(self, avatar: float, user: float) -> None:
        if not (0.0 <= avatar <= 50.0 and 0.0 <= user <= 50.0):
            raise ProtocolError("guidance: scales must be within 0-50")
        self.engine.set_guidance(avatar, user)

    def finish(self) -> list:
        started = time.perf_counter()
        return [self._blocks(self.engine.finish(), 0.0, started), Ended()]

    def _blocks(self, blocks: list[MotionBlock], sent_at: float, started: float) -> Blocks:
        self.next_block += len(blocks)
        frames = [self._encoded(block) for block in blocks] if self.renderer is not None else []
        elapsed = (time.perf_counter() - started) * 1000.0
        return Blocks(
            block_tuples(blocks), frames=frames, input_frame=self.next_frame, sent_at=sent_at, server_ms=elapsed
        )

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def read_token(path: str | Path) -> str:
    """The token in file `path` (first line, stripped); a missing or empty file raises ValueError."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"token file not found: {str(file)!r}")
    lines = file.read_text(encoding="utf-8").strip().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"token file {str(file)!r} is empty")
    return lines[0].strip()
