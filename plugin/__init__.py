"""avatarforcing.plugin: the plugin system and the application built on it.

- `api/`: what plugin authors import (hookspecs, markers, types, options, errors);
- `host`: loading plugins (entry points, ``AVATARFORCING_PLUGINS``) and looking up what they
  provide; `events`: firing the session hooks;
- `builtins/`: the built-in plugins, grouped by what they provide (sources, engines, renderers,
  sinks), registered through entry points exactly like third-party ones;
- `app/`: the application — CLI, commands, configuration, the session runtime, doctor, weights.

Plugin authors need only::

    from avatarforcing.plugin import hookimpl

plus, to describe what they provide, the small types re-exported here (`SourceSpec`,
`RendererSpec`, `SinkSpec`, `EngineSpec`, `OptionSpec`, `CommandSpec`, `CheckResult`, `Frame`, `AudioChunk`,
`MotionBlock`, `InputTick`, `SessionInfo`), `ConfigError`, and `resolve_options` to validate a plugin's
own ``[plugins.NAME]`` settings against `OptionSpec`s. See ``docs/plugins.md`` and
`avatarforcing.plugin.api.hookspecs`.
"""

from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.api.markers import hookimpl
from avatarforcing.plugin.api.options import resolve_options
from avatarforcing.plugin.api.types import (
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
