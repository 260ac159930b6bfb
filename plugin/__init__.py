"""avatarforcing.plugin: hookspecs, plugin manager, configuration and the ``avatarforcing`` CLI.

Plugin authors need only::

    from avatarforcing.plugin import hookimpl

plus, to describe what they provide, the small types re-exported here (`SourceSpec`,
`RendererSpec`, `SinkSpec`, `EngineSpec`, `OptionSpec`, `CommandSpec`, `CheckResult`, `Frame`, `AudioChunk`,
`MotionBlock`, `InputTick`, `SessionInfo`), `ConfigError`, and `resolve_options` to validate a plugin's
own ``[plugins.NAME]`` settings against `OptionSpec`s. See ``docs/plugins.md`` and
`avatarforcing.plugin.hookspecs`.
"""

from avatarforcing.plugin.errors import ConfigError, PluginError
from avatarforcing.plugin.markers import hookimpl
from avatarforcing.plugin.options import resolve_options
from avatarforcing.plugin.types import (
    AudioChunk,
    CheckResult,
    CommandSpec,
    EngineSpec,
    Frame,
    InputTick,
    MotionBlock,
    OptionSpec,
    RendererSpec,
    SessionInfo,
    SinkSpec,
    SourceSpec,
)

__all__ = [
    "AudioChunk",
    "CheckResult",
    "CommandSpec",
    "ConfigError",
    "EngineSpec",
    "Frame",
    "InputTick",
    "MotionBlock",
    "OptionSpec",
    "PluginError",
    "RendererSpec",
    "SessionInfo",
    "SinkSpec",
    "SourceSpec",
    "hookimpl",
    "resolve_options",
]
