"""What hooks exchange: plain dataclasses and protocols, free of torch.

Media conventions used everywhere in avatarforcing:

- time is in seconds since the start of the session (or of the file), as ``float``;
- audio samples are ``float32`` in [-1, 1], shape ``(n,)`` (mono) or ``(n, channels)``;
- images are ``uint8`` arrays, shape ``(height, width, 3)`` RGB or ``(height, width, 4)`` RGBA;
- the model runs at 25 frames per second and 16 kHz audio (`SessionInfo.fps`/`.sample_rate`).

Named things (sources, renderers, sinks) are described by a *spec*: a name that users type in
the config or on the command line, a one-line description, a factory, and the options the
factory accepts (`OptionSpec`, each with a default). The factory is called with every option as
a keyword argument, already validated and converted to the declared type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from avatarforcing.schemas.media_rates import FRAME_RATE, SAMPLE_RATE

if TYPE_CHECKING:  # pragma: no cover - for annotations only
    import argparse

    import numpy as np

    from avatarforcing.plugin.app.config import AppConfig

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
OPTION_TYPES = (str, int, float, bool)
CheckStatus = Literal["ok", "warn", "fail"]
SourceKind = Literal["avatar_audio", "user_audio", "user_video", "avatar_video"]
SOURCE_KINDS: tuple[str, ...] = ("avatar_audio", "user_audio", "user_video", "avatar_video")
VIDEO_SOURCE_KINDS: tuple[str, ...] = ("user_video", "avatar_video")
FACE_PARAMS_SPACE = "face-13"  # `EngineSpec.motion_space` of the 13 named face parameters


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{what} name {name!r} must be lower case letters, digits, '-' or '_', starting with a letter or digit"
        )


# --------------------------------------------------------------------------------------------
# Options and specs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionSpec:
    """One option of a source, renderer or sink.

    `type` is one of ``str``, ``int``, ``float``, ``bool``; `default` must be of that type (an
    ``int`` is accepted for a ``float`` option). `choices` restricts the value to a set;
    `minimum`/`maximum` bound numbers (inclusive). `required`: the user must give a value
    other than the default (e.g. a file path whose default is ``""``). `check(value)` returns
    ``None`` or a short description of what is wrong (e.g. ``"file not found"``). Values given
    as strings (``--set``) are converted to `type`. `secret` (a password, a token): every
    printed configuration, log line and error shows ``"***"`` instead of the value.
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None
    secret: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.match(r"^[a-z][a-z0-9_]*$", self.name):
            raise ValueError(f"option name {self.name!r} must be a lower-case identifier")
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name!r}: type must be str, int, float or bool")
        ok = isinstance(self.default, self.type) or (self.type is float and isinstance(self.default, int))
        if not ok or (self.type is int and isinstance(self.default, bool)):
            raise ValueError(f"option {self.name!r}: default {self.default!r} is not a {self.type.__name__}")


@dataclass(frozen=True)
class SourceSpec:
    """A named input source, returned by the ``register_*_sources`` hooks.

    `factory(**options)` returns an `AudioSource` (avatar/user audio) or a `VideoSource` (user
    video, avatar video). `name` is unique among the sources of its kind.

    `reads_file`: the source reads a file, not a device. A live session then treats it as
    configuration: its options are checked before anything loads, a failure ends the session
    instead of being retried (a file does not come back), and the session ends when every
    file source has ended.
    """

    name: str
    description: str
    factory: Callable[..., Any]
    options: tuple[OptionSpec, ...] = ()
    reads_file: bool = False

    def __post_init__(self) -> None:
        _check_name("source", self.name)


@dataclass(frozen=True)
class RendererSpec:
    """A named renderer (motion latents + identity -> RGB frames); `factory(**options)` returns
    a `Renderer`."""

    name: str
    description: str
    factory: Callable[..., Any]
    options: tuple[OptionSpec, ...] = ()

    def __post_init__(self) -> None:
        _check_name("renderer", self.name)


@dataclass(frozen=True)
class SinkSpec:
    """A named output; `factory(**options)` returns a `Sink`.

    `accepts_audio` says whether the sink wants the avatar audio (`Sink.write_audio`) as well as
    the frames. `reopen`: a live session closes a sink that fails and reopens it with backoff
    (a device or a service comes back); ``False`` for sinks that a reopen would harm (the
    recorder would start its file again): such a sink is dead once it fails, and the session
    ends when its last sink is dead.
    """

    name: str
    description: str
    factory: Callable[..., Any]
    options: tuple[OptionSpec, ...] = ()
    accepts_audio: bool = False
    reopen: bool = True

    def __post_init__(self) -> None:
        _check_name("sink", self.name)


@dataclass(frozen=True)
class EngineSpec:
    """A named motion engine, returned by the ``register_engines`` hook.

    `factory(**options)` returns a `MotionEngine`; `options` are read from the TOML table
    ``[engines.NAME]`` (``--set engines.NAME.key=value``). `default_renderer` is the renderer
    name used when the config does not choose one (e.g. ``"motion-autoencoder"``,
    ``"puppet"``); ``""`` means the config's ``[render] use``. `motion_space` names what
    ``MotionBlock.latents`` holds: ``"face-13"`` (`FACE_PARAMS_SPACE`) for ``float32
    [num_frames, 13]`` denormalized parameters of `avatarforcing.schemas.motion_space` (any
    renderer of face parameters can draw them: with a portrait given and a renderer named
    ``portrait`` installed, a session picks that one); ``""`` for anything else (e.g. the
    official engine's 512-d latents, which only its own decoder reads).
    """

    name: str
    description: str
    factory: Callable[..., Any]
    options: tuple[OptionSpec, ...] = ()
    default_renderer: str = ""
    motion_space: str = ""

    def __post_init__(self) -> None:
        _check_name("engine", self.name)
        if self.default_renderer:
            _check_name("renderer", self.default_renderer)
        if self.motion_space and not NAME_PATTERN.match(self.motion_space):
            raise ValueError(f"engine {self.name!r}: motion_space {self.motion_space!r} must be a lower-case name")


@dataclass(frozen=True)
class CommandSpec:
    """A CLI subcommand: ``avatarforcing NAME ...``.

    `configure(parser)` adds the command's arguments to its `argparse.ArgumentParser`;
    `run(args, context)` executes it and returns the process exit status. `context` is an
    `avatarforcing.plugin.app.cli.CommandContext` (console, loaded plugins, effective config).
    Import heavy modules (torch...) inside `run`, never at module level: every command module
    is imported to build the parser.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Any, Any], int]

    def __post_init__(self) -> None:
        _check_name("command", self.name)


@dataclass(frozen=True)
class CheckResult:
    """One line of ``avatarforcing doctor``.

    `status` is ``"ok"``, ``"warn"`` (works, but something is missing or degraded) or
    ``"fail"`` (a feature cannot work). `fix` tells the user what to do; empty when ok.
    """

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in ("ok", "warn", "fail"):
            raise ValueError(f"check {self.name!r}: status must be ok, warn or fail")

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


# --------------------------------------------------------------------------------------------
# Media
# --------------------------------------------------------------------------------------------
@dataclass
class AudioChunk:
    """Consecutive audio samples.

    `samples`: ``float32`` ``(n,)`` or ``(n, channels)`` in [-1, 1]; `sample_rate` in Hz;
    `timestamp`: time of the first sample in seconds; `index`: 0, 1, 2... per stream.
    """

    samples: np.ndarray
    sample_rate: int
    timestamp: float
    index: int

    @property
    def duration(self) -> float:
        """Seconds covered by the chunk."""
        return len(self.samples) / float(self.sample_rate)


@dataclass
class Frame:
    """One video frame.

    `image`: ``uint8`` ``(height, width, 3)`` RGB or ``(height, width, 4)`` RGBA; `index`:
    0, 1, 2... per stream; `timestamp`: presentation time in seconds. `metadata` carries
    free-form annotations that plugins add (JSON-serialisable values, please).
    """

    image: np.ndarray
    index: int
    timestamp: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class MotionBlock:
    """A block of generated motion.

    `index`: 0 for the first clip, then 1, 2...; `first_frame`: session frame index of the
    block's first new frame; `num_frames`: new frames in the block (50 for the official first
    clip, then 10); `latents`: the renderer's input, for the official engine a
    ``torch.Tensor`` of shape ``(num_frames, 512)`` (typed ``Any`` to keep this module free of
    torch); `metadata`: timings and other telemetry (JSON-serialisable).
    """

    index: int
    first_frame: int
    num_frames: int
    latents: Any
    metadata: dict[str, Any] = field(default_factory=dict)

    def frames(self, start: int, stop: int, **metadata: Any) -> MotionBlock:
        """Frames ``start..stop-1`` of this block (block-relative) as a block of their own: same
        `index`, `latents` sliced along the first axis, `metadata` copied with `metadata` added.
        Renderers draw any such slice as they draw a whole block."""
        if not 0 <= start < stop <= self.num_frames:
            raise ValueError(f"frames {start}..{stop} outside block {self.index} of {self.num_frames} frames")
        return MotionBlock(
            self.index,
            self.first_frame + start,
            stop - start,
            self.latents[start:stop],
            dict(self.metadata, **metadata),
        )


@dataclass
class InputTick:
    """What the session hands an engine for `num_frames` consecutive output frames.

    One tick is normally 1 frame (40 ms); the session may batch several. `first_frame`: session
    frame index of the first; `avatar_audio`/`user_audio`: ``float32`` ``(num_frames * 640,)``
    16 kHz mono (zeros when the source is silent or absent); `user_frames`: a list of
    `num_frames` entries, each an RGB ``uint8`` ``(H, W, 3)`` full frame of the remote
    participant (any size) or ``None`` where no video is available; `avatar_voice`: voice
    activity of `avatar_audio` in [0, 1]; `captured_at`: ``time.monotonic()`` when the newest
    audio sample of the tick was captured (0.0 when unknown; the session measures end-to-end
    latency from it); `avatar_frames`: like `user_frames`, the local user's own face (the
    person the avatar represents, ``[sources.avatar_video]``) — `num_frames` entries, ``None``
    where there is none; left out, it is ``[None] * num_frames``.
    """

    first_frame: int
    num_frames: int
    avatar_audio: np.ndarray
    user_audio: np.ndarray
    user_frames: list
    avatar_voice: float = 0.0
    captured_at: float = 0.0
    avatar_frames: list | None = None

    def __post_init__(self) -> None:
        # after the fields with defaults, so ticks built without it stay valid: no video
        if self.avatar_frames is None:
            self.avatar_frames = [None] * self.num_frames


@dataclass
class SessionInfo:
    """What plugins know about a running session (live or offline render).

    `session_id`: unique string; `config`: the effective `AppConfig`; `fps`/`sample_rate`: the
    model's frame and audio rates; `frame_size`: ``(height, width)`` of rendered frames;
    `portrait_path`/`portrait`: the identity image (RGB ``uint8`` or ``None``); `sources`:
    kind -> source name in use (``""`` for none); `renderer`, `sinks`: names in use;
    `engine`: the loaded engine object when there is one (renderers that decode the official
    motion latents use it), else ``None``; `latency_s`: the session's smoothed end-to-end
    latency in seconds (input captured → frame handed to the sinks), updated while the session
    runs (0.0 until measured; OBS's audio sync offset and the delayed microphone follow it);
    `offline`: True for renders (files read as fast as the engine goes, every frame kept: a sink
    may wait for its own work instead of dropping frames), False live;
    `plugin_state`: a dict in which plugins keep per-session state under their own key (instead
    of module globals).
    """

    session_id: str
    config: AppConfig
    fps: int = FRAME_RATE
    sample_rate: int = SAMPLE_RATE
    frame_size: tuple[int, int] = (512, 512)
    portrait_path: str = ""
    portrait: np.ndarray | None = None
    sources: Mapping[str, str] = field(default_factory=dict)
    renderer: str = ""
    sinks: Sequence[str] = ()
    engine: Any = None
    latency_s: float = 0.0
    offline: bool = False
    plugin_state: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# What factories return
# --------------------------------------------------------------------------------------------
class AudioSource(Protocol):
    """Iterating yields `AudioChunk`s in order until the stream ends (files) or `close()` is
    called (live sources block in `__next__` until audio is available). `close()` may be
    called from another thread and more than once."""

    def __iter__(self) -> Iterator[AudioChunk]: ...

    def close(self) -> None: ...


class VideoSource(Protocol):
    """Iterating yields `Frame`s in order (timestamps increase) until the stream ends or
    `close()` is called; same threading rules as `AudioSource`."""

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Renderer(Protocol):
    """Turns motion into frames. `open(session)` once before the first block (the identity is
    `session.portrait`); `render(block)` returns `block.num_frames` frames indexed from
    `block.first_frame`; `close()` once at the end."""

    def open(self, session: SessionInfo) -> None: ...

    def render(self, block: MotionBlock) -> Sequence[Frame]: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Receives timed output. `open(session)` once; `write_frame(frame)` per frame in order;
    `write_audio(chunk)` per avatar-audio chunk, called only if the spec says `accepts_audio`
    (sinks without audio may leave it out); `close()` once (flush files, release devices)."""

    def open(self, session: SessionInfo) -> None: ...

    def write_frame(self, frame: Frame) -> None: ...

    def write_audio(self, chunk: AudioChunk) -> None: ...

    def close(self) -> None: ...


class MotionEngine(Protocol):
    """Streaming motion generator used by live sessions, renders and benchmarks.

    Attributes: `fps` (25), `sample_rate` (16000), `first_block_frames` (frames of the first
    block), `block_frames` (frames of every later block). Threading: `extract` runs on the
    features thread, `generate`/`finish` on the generator thread; the two may run concurrently
    (the engine guards its own shared state).

    - `open(session)`: load weights, encode the identity (``session.portrait``); settings
      shared by all engines come from ``session.config.model`` (nfe, a_cfg_scale, u_cfg_scale,
      seed, device, threads);
    - `warm_up()`: run the compute once so the first live block is not cold; leaves the stream
      state fresh; returns the blocks it computed (the session renders the first frame of the
      first one to hold until the first live frame; ``[]`` when there is nothing to show);
    - `extract(tick)`: an `InputTick` -> opaque features (face tracking, audio features);
    - `set_guidance(avatar_scale, user_scale)`: applies from the next block;
    - `generate(features)`: push features, return every `MotionBlock` now computable (maybe
      ``[]``);
    - `finish()`: the inputs ended; the remaining blocks;
    - `close()`: release everything.
    """

    fps: int
    sample_rate: int
    first_block_frames: int
    block_frames: int

    def open(self, session: SessionInfo) -> None: ...

    def warm_up(self) -> list[MotionBlock]: ...

    def extract(self, tick: InputTick) -> Any: ...

    def set_guidance(self, avatar_scale: float, user_scale: float) -> None: ...

    def generate(self, features: Any) -> list[MotionBlock]: ...

    def finish(self) -> list[MotionBlock]: ...

    def close(self) -> None: ...
