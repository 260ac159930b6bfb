"""The hooks of avatarforcing: this module is their reference documentation.

Every hook is an empty function whose docstring states its parameters, its return value and
how pluggy calls it. Implement a hook in your plugin with a function of the same name, marked
with ``@hookimpl`` (``from avatarforcing.plugin import hookimpl``); declare only the parameters
you use. Plugins are found through the ``avatarforcing`` entry-point group (see
``docs/plugins.md``).

Unless a docstring says otherwise a hook is neither *firstresult* (every implementation runs
and the caller gets the list of the non-``None`` results) nor *historic*.

Hooks at a glance:

- registries, called whenever the lists are needed (``avatarforcing plugins``, a session
  resolving names from the config): `register_avatar_audio_sources`,
  `register_user_audio_sources`, `register_user_video_sources`,
  `register_avatar_video_sources`, `register_renderers`, `register_sinks`, `register_engines`,
  `register_commands`;
- configuration and diagnostics: `configure`, `doctor_checks`;
- session lifecycle and events, in this order: `session_started`, then per block
  `block_generated` and per frame `filter_frame` then `frame_rendered`, then
  `session_stopped`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avatarforcing.plugin.api.markers import hookspec

if TYPE_CHECKING:  # pragma: no cover - for annotations only
    from avatarforcing.plugin.api.types import (
        CheckResult,
        CommandSpec,
        EngineSpec,
        Frame,
        MotionBlock,
        RendererSpec,
        SessionInfo,
        SinkSpec,
        SourceSpec,
    )
    from avatarforcing.plugin.app.config import AppConfig


# --------------------------------------------------------------------------------------------
# Registries: named sources, renderers, sinks and CLI commands
# --------------------------------------------------------------------------------------------
@hookspec
def register_avatar_audio_sources() -> list[SourceSpec]:
    """Name the sources of the avatar's audio (the user's own voice).

    Parameters: none.

    Returns: a list of `SourceSpec`; each factory returns an `AudioSource` yielding
    `AudioChunk`s (any sample rate; the session resamples to 16 kHz mono). Names must be unique
    among avatar-audio sources; users pick one with ``[sources.avatar_audio] use = "NAME"``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_user_audio_sources() -> list[SourceSpec]:
    """Name the sources of the user's audio (the remote participant's voice).

    Parameters: none.

    Returns: a list of `SourceSpec`; each factory returns an `AudioSource` yielding
    `AudioChunk`s. Names must be unique among user-audio sources; users pick one with
    ``[sources.user_audio] use = "NAME"``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_user_video_sources() -> list[SourceSpec]:
    """Name the sources of the user's video (the remote participant's face).

    Parameters: none.

    Returns: a list of `SourceSpec`; each factory returns a `VideoSource` yielding RGB
    `Frame`s with increasing timestamps (any size and rate; the session crops and resamples to
    the model's 25 fps). Names must be unique among user-video sources; users pick one with
    ``[sources.user_video] use = "NAME"``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_avatar_video_sources() -> list[SourceSpec]:
    """Name the sources of the avatar's video (the local user's own face: the person the avatar
    represents, e.g. a webcam pointed at you).

    Parameters: none.

    Returns: a list of `SourceSpec`; each factory returns a `VideoSource` yielding RGB `Frame`s
    with increasing timestamps (any size and rate; the session resamples to 25 fps and hands
    them to the engine as ``InputTick.avatar_frames``). Engines that do not drive the avatar
    from a face (``default``, ``official``) ignore them; ``mirror`` copies the face onto the
    avatar. Names must be unique among avatar-video sources; users pick one with
    ``[sources.avatar_video] use = "NAME"`` (default ``""``: none).

    Firstresult: no. Historic: no.
    """


@hookspec
def register_renderers() -> list[RendererSpec]:
    """Name renderers: motion latents + identity -> RGB frames.

    Parameters: none.

    Returns: a list of `RendererSpec`; each factory returns a `Renderer`. Names must be unique
    among renderers; users pick one with ``[render] use = "NAME"``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_sinks() -> list[SinkSpec]:
    """Name sinks: timed frames (and the avatar audio, where relevant) -> somewhere.

    Parameters: none.

    Returns: a list of `SinkSpec`; each factory returns a `Sink`. Names must be unique among
    sinks; users pick any number with ``[sinks] use = ["NAME", ...]`` and set options in
    ``[sinks.NAME]``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_engines() -> list[EngineSpec]:
    """Name motion engines: streaming generators of motion from audio and the user's video.

    Parameters: none.

    Returns: a list of `EngineSpec`; each factory returns a `MotionEngine` (open, warm_up,
    extract, set_guidance, generate, finish, close). Names must be unique among engines; users
    pick one with ``[model] engine = "NAME"`` and set its options in ``[engines.NAME]``.

    Firstresult: no. Historic: no.
    """


@hookspec
def register_commands() -> list[CommandSpec]:
    """Add subcommands to the ``avatarforcing`` CLI.

    Parameters: none.

    Returns: a list of `CommandSpec`. A name already taken by a built-in command (or by an
    earlier plugin) is refused with a warning on stderr and in ``avatarforcing doctor``; the
    built-in wins.

    Firstresult: no. Historic: no.
    """


# --------------------------------------------------------------------------------------------
# Configuration and diagnostics
# --------------------------------------------------------------------------------------------
@hookspec(historic=True)
def configure(config: AppConfig) -> None:
    """Validate and take note of the effective configuration, once it is loaded.

    Parameters: ``config``, the `AppConfig` (defaults <- TOML file <- ``--set`` <- command
    flags). A plugin's own settings live in ``config.plugins[NAME]`` (the ``[plugins.NAME]``
    table of the TOML file, a plain dict); raise `avatarforcing.plugin.api.errors.ConfigError`
    naming the option for a bad value, and the CLI prints that one line.

    Returns: nothing (return values are ignored).

    Firstresult: no. Historic: yes — a plugin registered after the configuration was loaded is
    called with it at registration.
    """


@hookspec
def doctor_checks(config: AppConfig) -> list[CheckResult]:
    """Add checks to ``avatarforcing doctor`` (drivers, devices, services your plugin needs).

    Parameters: ``config``, the effective `AppConfig`.

    Returns: a list of `CheckResult` (status ``ok``/``warn``/``fail``, with a ``fix`` for
    anything not ok). Keep checks fast (well under a second) and free of side effects.

    Firstresult: no. Historic: no.
    """


# --------------------------------------------------------------------------------------------
# Session lifecycle and events (live sessions and offline renders alike)
# --------------------------------------------------------------------------------------------
@hookspec
def session_started(session: SessionInfo) -> None:
    """A session starts: sources, renderer and sinks are open, no block generated yet.

    Parameters: ``session``, the `SessionInfo` (names in use, rates, identity, config, and
    ``session.plugin_state`` for per-session state of your plugin).

    Returns: nothing (return values are ignored). An exception aborts the session start.

    Firstresult: no. Historic: no.
    """


@hookspec
def block_generated(session: SessionInfo, block: MotionBlock) -> None:
    """The generator produced a block of motion, before it is rendered (telemetry).

    Parameters: ``session``, the `SessionInfo`; ``block``, the `MotionBlock` (do not modify
    ``block.latents``).

    Returns: nothing (return values are ignored). Called on the generator's thread: return
    quickly.

    Firstresult: no. Historic: no.
    """


@hookspec
def filter_frame(session: SessionInfo, frame: Frame) -> None:
    """Modify a rendered frame before the sinks get it (overlays, filters, watermarks).

    Parameters: ``session``, the `SessionInfo`; ``frame``, the `Frame`. Modify it in place
    (like pytest's ``pytest_collection_modifyitems``): draw into ``frame.image``, or assign a new
    ``uint8`` array of the same height and width to ``frame.image``, and/or add entries to
    ``frame.metadata``. Implementations run one after another in pluggy's order (the last
    registered first; use ``tryfirst``/``trylast`` to place yours), each seeing the previous
    ones' changes.

    Returns: nothing (return values are ignored). Called on the renderer's thread, once per
    frame (25 times a second): keep it fast.

    Firstresult: no. Historic: no.
    """


@hookspec
def frame_rendered(session: SessionInfo, frame: Frame) -> None:
    """A frame is final (after every `filter_frame`) and goes to the sinks (telemetry).

    Parameters: ``session``, the `SessionInfo`; ``frame``, the final `Frame` (read only).

    Returns: nothing (return values are ignored). Called once per frame: keep it fast.

    Firstresult: no. Historic: no.
    """


@hookspec
def session_stopped(session: SessionInfo, stats: dict[str, Any]) -> None:
    """A session ended (end of input, user stop, or error); sinks are already closed.

    Parameters: ``session``, the `SessionInfo`; ``stats``, a JSON-serialisable dict of what the
    session measured (at least ``frames`` rendered and ``error``: ``None`` or a one-line
    description of the failure that ended the session).

    Returns: nothing (return values are ignored). Exceptions are logged, not raised, so that
    every plugin sees the stop.

    Firstresult: no. Historic: no.
    """
