"""Build the plugin manager and look up what plugins provide.

Plugins are loaded from the ``avatarforcing`` entry-point group — built-in plugins too, through
the entry points in avatarforcing's own ``pyproject.toml``. Two environment variables
(datasette's pattern):

- ``AVATARFORCING_PLUGINS``: when set, only the entry points named in this comma-separated list
  are loaded; the empty string loads none. Names that match no entry point are reported by
  ``avatarforcing plugins`` and ``doctor``.
- ``AVATARFORCING_TRACE=1``: every hook call and its result is written to stderr (pluggy's
  tracing).

A plugin whose entry point fails to import is skipped and reported (``load_errors``), so one
broken plugin does not take the CLI down.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TextIO

import pluggy

from avatarforcing.plugin.api import hookspecs
from avatarforcing.plugin.api.errors import ConfigError, PluginError
from avatarforcing.plugin.api.markers import PROJECT_NAME
from avatarforcing.plugin.api.options import resolve_options
from avatarforcing.plugin.api.types import (
    SOURCE_KINDS,
    CommandSpec,
    EngineSpec,
    RendererSpec,
    SinkSpec,
    SourceSpec,
)

ENTRY_POINT_GROUP = "avatarforcing"
PLUGINS_ENV = "AVATARFORCING_PLUGINS"
TRACE_ENV = "AVATARFORCING_TRACE"

log = logging.getLogger(__name__)

# registry name -> (hook name, spec class)
REGISTRIES: dict[str, tuple[str, type]] = {
    "avatar_audio": ("register_avatar_audio_sources", SourceSpec),
    "user_audio": ("register_user_audio_sources", SourceSpec),
    "user_video": ("register_user_video_sources", SourceSpec),
    "avatar_video": ("register_avatar_video_sources", SourceSpec),
    "renderers": ("register_renderers", RendererSpec),
    "sinks": ("register_sinks", SinkSpec),
    "engines": ("register_engines", EngineSpec),
    "commands": ("register_commands", CommandSpec),
}


@dataclass(frozen=True)
class Provided:
    """A spec and the name of the plugin that provided it."""

    plugin: str
    spec: Any


@dataclass(frozen=True)
class PluginInfo:
    """What ``avatarforcing plugins`` shows about one registered plugin."""

    name: str
    module: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    provides: Mapping[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "distribution": self.distribution,
            "version": self.version,
            "hooks": list(self.hooks),
            "provides": {k: list(v) for k, v in self.provides.items()},
        }


def new_plugin_manager() -> pluggy.PluginManager:
    """An empty `pluggy.PluginManager` for project ``avatarforcing`` with the hookspecs added."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


def enable_trace(pm: pluggy.PluginManager, stream: TextIO | None = None) -> None:
    """Write every hook call and result to `stream` (default: stderr, looked up per write)."""
    pm.trace.root.setwriter(lambda text: (stream or sys.stderr).write(text))
    pm.enable_tracing()


def callers_per_plugin(pm: pluggy.PluginManager, hook_name: str) -> list[tuple[str, Any]]:
    """``(plugin name, caller)`` for each implementation of hook `hook_name`, in pluggy's call
    order; ``caller(**kwargs)`` calls that plugin's implementation alone and returns the list
    of its results. Tracing and monitoring see each call. Use it to attribute results to
    plugins or to keep going when one plugin raises."""
    impls = list(reversed(getattr(pm.hook, hook_name).get_hookimpls()))
    callers = []
    for impl in impls:
        others = [i.plugin for i in impls if i.plugin is not impl.plugin]
        callers.append((impl.plugin_name, pm.subset_hook_caller(hook_name, remove_plugins=others)))
    return callers


def _requested(environ: Mapping[str, str]) -> tuple[str, ...] | None:
    if PLUGINS_ENV not in environ:
        return None
    return tuple(n.strip() for n in environ[PLUGINS_ENV].split(",") if n.strip())


@dataclass
class PluginHost:
    """The plugin manager plus the questions the rest of the product asks it.

    `requested`: the names from ``AVATARFORCING_PLUGINS`` (``None`` when unset); `missing`:
    requested names that match no entry point; `load_errors`: entry-point name -> one-line
    error for plugins that failed to import or register.
    """

    pm: pluggy.PluginManager
    requested: tuple[str, ...] | None = None
    missing: tuple[str, ...] = ()
    load_errors: dict[str, str] = field(default_factory=dict)
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- registration ---------------------------------------------------------------------------
    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (module, class instance...) directly; returns its name."""
        registered = self.pm.register(plugin, name=name)
        if registered is None:  # pragma: no cover - blocked name
            raise PluginError(f"plugin {name!r} is blocked")
        return registered

    def load_entry_points(self, environ: Mapping[str, str] | None = None) -> None:
        """Load the ``avatarforcing`` entry points allowed by ``AVATARFORCING_PLUGINS``."""
        env = os.environ if environ is None else environ
        self.requested = _requested(env)
        seen: set[str] = set()
        for dist in metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != ENTRY_POINT_GROUP or ep.name in seen:
                    continue
                if self.requested is not None and ep.name not in self.requested:
                    continue
                seen.add(ep.name)
                if self.pm.get_plugin(ep.name) is not None or self.pm.is_blocked(ep.name):
                    continue
                try:
                    plugin = ep.load()
                    self.pm.register(plugin, name=ep.name)
                except Exception as error:  # a broken plugin must not break the CLI
                    self.load_errors[ep.name] = f"{type(error).__name__}: {error}"
                    log.warning("plugin %r failed to load: %s", ep.name, error)
                    continue
                dist_name = dist.metadata["Name"] or ""
                self.distributions[ep.name] = (dist_name, dist.version or "")
        if self.requested is not None:
            self.missing = tuple(n for n in self.requested if n not in seen)

    # -- registries -----------------------------------------------------------------------------
    def provided(self, registry: str) -> list[Provided]:
        """Every spec of a registry (``avatar_audio``, ``user_audio``, ``user_video``,
        ``avatar_video``, ``renderers``, ``sinks``, ``engines``, ``commands``) with the plugin that
        provided it, in call order. Raises `PluginError` if a plugin returns something that is not a list of the
        registry's spec type."""
        hook_name, spec_type = REGISTRIES[registry]
        out: list[Provided] = []
        for plugin_name, caller in callers_per_plugin(self.pm, hook_name):
            for result in caller():
                if not isinstance(result, (list, tuple)):
                    raise PluginError(
                        f"plugin {plugin_name!r}: {hook_name}() must return a list of "
                        f"{spec_type.__name__}, got {type(result).__name__}"
                    )
                for spec in result:
                    if not isinstance(spec, spec_type):
                        raise PluginError(
                            f"plugin {plugin_name!r}: {hook_name}() returned "
                            f"{type(spec).__name__}, expected {spec_type.__name__}"
                        )
                    out.append(Provided(plugin_name, spec))
        return out

    def lookup(self, registry: str, name: str) -> Provided:
        """The single spec named `name` in `registry`; `PluginError` naming the alternatives
        when there is none, or when two plugins claim the name."""
        entries = self.provided(registry)
        matches = [e for e in entries if e.spec.name == name]
        what = _REGISTRY_LABEL[registry]
        if not matches:
            available = ", ".join(sorted({e.spec.name for e in entries})) or "none"
            hint = self._restriction_hint()
            raise PluginError(f"no {what} named {name!r} (available: {available}){hint}")
        if len(matches) > 1:
            owners = ", ".join(repr(m.plugin) for m in matches)
            raise PluginError(
                f"{what} {name!r} is provided by several plugins ({owners}); restrict them with {PLUGINS_ENV}"
            )
        return matches[0]

    def _restriction_hint(self) -> str:
        if self.requested is None:
            return ""
        return f"; {PLUGINS_ENV}={','.join(self.requested)!r} limits the loaded plugins"

    # -- construction of named things ----------------------------------------------------------
    def create(self, registry: str, name: str, options: Mapping[str, Any], where: str) -> Any:
        """Look up `name`, validate `options` against its `OptionSpec`s (errors name
        ``where.KEY``) and call its factory."""
        entry = self.lookup(registry, name)
        values = resolve_options(where, entry.spec.options, options)
        return entry.spec.factory(**values)

    def create_source(self, kind: str, config: Any) -> Any:
        """The source configured in ``[sources.KIND]`` of `config` (an `AppConfig`), or ``None``
        when its ``use`` is empty."""
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {kind!r}")
        slot = config.sources.slot(kind)
        if not slot.use:
            return None
        return self.create(kind, slot.use, slot.options, f"sources.{kind}")

    def create_renderer(self, config: Any) -> Any:
        """The renderer configured in ``[render]``."""
        if not config.render.use:
            raise ConfigError("render.use", "a renderer is required")
        return self.create("renderers", config.render.use, config.render.options, "render")

    def create_sinks(self, config: Any) -> list[tuple[SinkSpec, Any]]:
        """Every sink in ``[sinks] use``, with its spec, in the configured order."""
        sinks = []
        for name in config.sinks.use:
            spec = self.lookup("sinks", name).spec
            sinks.append((spec, self.create("sinks", name, config.sinks.options_for(name), f"sinks.{name}")))
        return sinks

    def create_engine(self, config: Any) -> tuple[EngineSpec, Any]:
        """The motion engine named by ``[model] engine`` with its options from
        ``[engines.NAME]``, and its spec (whose `default_renderer` applies when the config
        names no renderer)."""
        name = config.model.engine
        if not name:
            raise ConfigError("model.engine", "an engine is required (see `avatarforcing plugins`)")
        spec = self.lookup("engines", name).spec
        return spec, self.create("engines", name, config.engines.options_for(name), f"engines.{name}")

    def configure(self, config: Any) -> None:
        """Give plugins the effective configuration (historic ``configure`` hook)."""
        self.pm.hook.configure.call_historic(kwargs={"config": config})

    # -- description ----------------------------------------------------------------------------
    def plugin_infos(self) -> list[PluginInfo]:
        """One `PluginInfo` per registered plugin, sorted by name."""
        provides: dict[str, dict[str, list[str]]] = {}
        for registry in REGISTRIES:
            for entry in self.provided(registry):
                provides.setdefault(entry.plugin, {}).setdefault(registry, []).append(entry.spec.name)
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ())
            dist, version = self.distributions.get(name, ("", ""))
            module = getattr(plugin, "__name__", None) or type(plugin).__module__
            infos.append(
                PluginInfo(
                    name=name,
                    module=module,
                    distribution=dist,
                    version=version,
                    hooks=tuple(hooks),
                    provides={k: tuple(v) for k, v in provides.get(name, {}).items()},
                )
            )
        return sorted(infos, key=lambda info: info.name)


_REGISTRY_LABEL = {
    "avatar_audio": "avatar-audio source",
    "user_audio": "user-audio source",
    "user_video": "user-video source",
    "avatar_video": "avatar-video source",
    "renderers": "renderer",
    "sinks": "sink",
    "engines": "engine",
    "commands": "command",
}


def build_plugin_host(
    environ: Mapping[str, str] | None = None,
    *,
    load_entry_points: bool = True,
    plugins: Iterable[object] = (),
    trace_stream: TextIO | None = None,
) -> PluginHost:
    """A `PluginHost` with the hookspecs, `plugins` registered directly, and (by default) the
    entry points allowed by ``AVATARFORCING_PLUGINS``. ``AVATARFORCING_TRACE`` set to a
    non-empty value other than ``0`` enables tracing to `trace_stream` (default stderr)."""
    env = os.environ if environ is None else environ
    host = PluginHost(new_plugin_manager())
    if env.get(TRACE_ENV, "") not in ("", "0"):
        enable_trace(host.pm, trace_stream)
    for plugin in plugins:
        host.register(plugin)
    if load_entry_points:
        host.load_entry_points(env)
    return host


def build_plugin_manager(environ: Mapping[str, str] | None = None) -> pluggy.PluginManager:
    """The bare `pluggy.PluginManager` with entry-point plugins loaded (see `build_plugin_host`)."""
    return build_plugin_host(environ).pm
