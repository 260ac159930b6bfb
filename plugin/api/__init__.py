"""The plugin API: everything a plugin author imports, and nothing of the application.

- `hookspecs`: the hooks, each documented where it is declared (the reference);
- `markers`: `hookimpl` (and `hookspec`, for the hookspecs themselves);
- `types`: what hooks exchange — specs (`SourceSpec`, `EngineSpec`, `RendererSpec`, `SinkSpec`,
  `OptionSpec`, `CommandSpec`), media (`Frame`, `AudioChunk`, `MotionBlock`, `InputTick`),
  `SessionInfo`, `CheckResult` and the protocols a provided object implements;
- `options`: validating a plugin's own ``[plugins.NAME]`` settings (`resolve_options`);
- `errors`: `ConfigError` and `PluginError`, reported by the CLI as one line.

The neutral schemas (``avatarforcing.schemas``: motion space, media rates) are part of the
contract too. ``avatarforcing.plugin`` re-exports the common names.
"""
