"""The application configuration: every option with a default, loaded from TOML, overridable.

Layers, later wins: defaults <- TOML file (``--config-file FILE`` or ``$AVATARFORCING_CONFIG``)
<- ``--set section.key=value`` <- a command's dedicated flags (e.g. ``bench --threads``).

File layout (every key optional)::

    [model]                       # motion engine, weights and sampler
    engine = "default"            # a motion engine name (see `avatarforcing plugins`)
    preset = "official"           # "official" | "fixture_small"
    checkpoint_dir = ""           # "" = $AVATARFORCING_WEIGHTS or ~/.cache/avatarforcing/weights
    flow_transformer = ""         # explicit file paths override checkpoint_dir
    motion_autoencoder = ""
    wav2vec2 = ""
    nfe = 10
    a_cfg_scale = 2.0
    u_cfg_scale = 1.0
    device = "auto"               # auto | cpu | cuda | cuda:N | mps
    backend = "auto"              # auto | tensorrt | cuda_graphs | cuda_eager | onnxruntime_cpu | torch_cpu
    threads = 0                   # 0 = let the engine choose
    seed = 20

    [engines.official]            # options of one motion engine (checked against its spec)
    model = ""

    [session]
    portrait = ""                 # identity image
    warm_up = true                # run the engine and renderer once before going live
    queue_frames = 0              # rendered frames waiting for the pacer (0 = four engine blocks, at least 25)
    render_frames = 1             # live: frames drawn per renderer call (1 = each leaves when drawn; 0 = whole block)
    feature_frames = 1            # frames per InputTick handed to the engine
    stats_interval = 10.0         # seconds between stats lines in the log (0 = never)
    guidance = "voice"            # "voice": scales follow the avatar's voice; "fixed": [model] scales
    vad_threshold_db = -45.0      # avatar audio louder than this (RMS dBFS) is speech
    vad_attack_ms = 40.0          # speech this long switches to speaking
    vad_release_ms = 200.0        # silence this long switches to listening (mouth closes)
    speak_a_cfg = 2.0             # guidance while the avatar speaks (audio, user)
    speak_u_cfg = 1.0
    listen_a_cfg = 1.0            # guidance while it listens
    listen_u_cfg = 1.5
    retry_initial_s = 0.5         # a failed source/sink is reopened after this, doubling...
    retry_max_s = 5.0             # ...up to this

    [sources.avatar_audio]        # the same for user_audio, user_video and avatar_video
    use = "microphone"            # a source name (see `avatarforcing plugins`); "" = none
    path = "me.wav"               # every other key is an option of the chosen source
                                  # defaults: microphone, loopback, screen, "" (no avatar video)

    [render]
    use = "motion-autoencoder"    # a renderer name; other keys are the renderer's options
                                  # (unset: "portrait" for face-parameter engines given a
                                  # portrait, when installed; else the engine's default renderer)

    [sinks]
    use = ["png-dir"]             # any number of sink names
    [sinks.png-dir]               # options of one sink
    dir = "frames"

    [plugins.example]             # free-form settings of plugin "example" (see `configure`)
    overlay = true

Options of sources, renderers and sinks are checked against what the chosen plugin declares
(`resolve_options`) when the session resolves the names, since only then is the plugin known.
Every error is a `ConfigError` naming the option and what it expects.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avatarforcing.plugin.api.errors import ConfigError
from avatarforcing.plugin.api.options import coerce, masked, resolve_options, unknown_option
from avatarforcing.plugin.api.types import NAME_PATTERN, SOURCE_KINDS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_ENV",
    "AppConfig",
    "ConfigError",
    "EnginesSettings",
    "ModelSettings",
    "RenderSettings",
    "SessionSettings",
    "SinksSettings",
    "SourceSlot",
    "SourcesSettings",
    "load_config",
    "parse_override",
    "resolve_options",
]

CONFIG_ENV = "AVATARFORCING_CONFIG"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _option(default: Any, help: str, **limits: Any) -> Any:
    """A dataclass field with its default, help text, and checks (choices/minimum/maximum/
    check: value -> error text or None)."""
    kind = tuple if isinstance(default, tuple) else type(default)
    return field(default=default, metadata={"help": help, "type": kind, **limits})


def _check_device(value: str) -> str | None:
    return None if _DEVICE.match(value) else "expected auto, cpu, mps, cuda or cuda:N"


def _check_name(value: str) -> str | None:
    if value == "" or NAME_PATTERN.match(value):
        return None
    return "expected a name of lower case letters, digits, '-' or '_' (or \"\" for none)"


@dataclass(frozen=True)
class ModelSettings:
    """``[model]``: which engine, which weights, which size, how to sample, where to run."""

    engine: str = _option("default", "motion engine name", check=_check_name)

    preset: str = _option("official", "model size", choices=("official", "fixture_small"))
    checkpoint_dir: str = _option("", 'directory with the official weights ("" = $AVATARFORCING_WEIGHTS or the cache)')
    flow_transformer: str = _option("", 'flow_transformer.pth path ("" = in checkpoint_dir)')
    motion_autoencoder: str = _option("", 'motion_autoencoder.pth path ("" = in checkpoint_dir)')
    wav2vec2: str = _option("", 'wav2vec2-base-960h directory ("" = in checkpoint_dir)')
    nfe: int = _option(10, "sampler steps (nfe - 1 network evaluations per block)", minimum=3, maximum=1000)
    a_cfg_scale: float = _option(2.0, "avatar-audio guidance scale", minimum=0.0, maximum=50.0)
    u_cfg_scale: float = _option(1.0, "user guidance scale", minimum=0.0, maximum=50.0)
    device: str = _option("auto", "compute device", check=_check_device)
    backend: str = _option(
        "auto",
        "what runs the generator graphs (auto = the fastest usable here; a named one that cannot run is an error)",
        choices=("auto", "tensorrt", "cuda_graphs", "cuda_eager", "onnxruntime_cpu", "torch_cpu"),
    )
    threads: int = _option(0, "CPU threads for torch (0 = automatic)", minimum=0, maximum=1024)
    seed: int = _option(20, "noise seed", minimum=0, maximum=2**63 - 1)


@dataclass(frozen=True)
class SessionSettings:
    """``[session]``: the identity shown by the avatar and how a live session runs (warm-up,
    queue depth, stats, the speak/listen guidance policy, source/sink retry backoff)."""

    portrait: str = _option("", "identity image (portrait) path")
    warm_up: bool = _option(True, "run the engine and renderer once before going live")
    queue_frames: int = _option(
        0, "rendered frames queued for output (0 = four engine blocks, at least 25)", minimum=0, maximum=1000
    )
    render_frames: int = _option(
        1,
        "live sessions: frames drawn per renderer call (1 = each frame goes out as soon as it is drawn, "
        "so a block's first frame does not wait for the others; 0 = the whole block at once)",
        minimum=0,
        maximum=1000,
    )
    feature_frames: int = _option(1, "frames per engine input tick", minimum=1, maximum=50)
    stats_interval: float = _option(
        10.0, "seconds between stats lines in the log (0 = never)", minimum=0.0, maximum=3600.0
    )
    guidance: str = _option("voice", "guidance policy", choices=("voice", "fixed"))
    vad_threshold_db: float = _option(
        -45.0, "speech threshold of the avatar audio (RMS dBFS)", minimum=-120.0, maximum=0.0
    )
    vad_attack_ms: float = _option(40.0, "speech needed to switch to speaking (ms)", minimum=0.0, maximum=5000.0)
    vad_release_ms: float = _option(200.0, "silence needed to switch to listening (ms)", minimum=0.0, maximum=5000.0)
    speak_a_cfg: float = _option(2.0, "audio guidance while speaking", minimum=0.0, maximum=50.0)
    speak_u_cfg: float = _option(1.0, "user guidance while speaking", minimum=0.0, maximum=50.0)
    listen_a_cfg: float = _option(1.0, "audio guidance while listening", minimum=0.0, maximum=50.0)
    listen_u_cfg: float = _option(1.5, "user guidance while listening", minimum=0.0, maximum=50.0)
    retry_initial_s: float = _option(
        0.5, "first delay before reopening a failed source or sink (s)", minimum=0.01, maximum=60.0
    )
    retry_max_s: float = _option(5.0, "longest delay between reopen attempts (s)", minimum=0.01, maximum=600.0)


@dataclass(frozen=True)
class SourceSlot:
    """One ``[sources.KIND]`` table: the chosen source (`use`, ``""`` for none) and its options
    (checked against the source's `OptionSpec`s when the name is resolved)."""

    use: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourcesSettings:
    """``[sources]``: one slot per kind of input. `avatar_video` (the local user's own face,
    for engines such as ``mirror``) has no source unless one is chosen."""

    avatar_audio: SourceSlot = field(default_factory=lambda: SourceSlot("microphone"))
    user_audio: SourceSlot = field(default_factory=lambda: SourceSlot("loopback"))
    user_video: SourceSlot = field(default_factory=lambda: SourceSlot("screen"))
    avatar_video: SourceSlot = field(default_factory=lambda: SourceSlot(""))

    def slot(self, kind: str) -> SourceSlot:
        if kind not in SOURCE_KINDS:
            raise ValueError(f"unknown source kind {kind!r}")
        return getattr(self, kind)


@dataclass(frozen=True)
class RenderSettings:
    """``[render]``: the chosen renderer and its options. `chosen`: the configuration names
    the renderer itself (a session otherwise picks one for its engine and portrait:
    `avatarforcing.plugin.app.session.runner.choose_renderer`)."""

    use: str = "motion-autoencoder"
    options: Mapping[str, Any] = field(default_factory=dict)
    chosen: bool = False


@dataclass(frozen=True)
class SinksSettings:
    """``[sinks]``: the sinks in use and the options of any sink (``[sinks.NAME]``)."""

    use: tuple[str, ...] = ()
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def options_for(self, name: str) -> Mapping[str, Any]:
        return self.options.get(name, {})


@dataclass(frozen=True)
class EnginesSettings:
    """``[engines]``: the options of any motion engine (``[engines.NAME]``), checked against the
    engine's `OptionSpec`s when the engine is created."""

    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def options_for(self, name: str) -> Mapping[str, Any]:
        return self.options.get(name, {})


@dataclass(frozen=True)
class AppConfig:
    """The effective configuration. `plugins` maps a plugin name to its free-form table."""

    model: ModelSettings = field(default_factory=ModelSettings)
    session: SessionSettings = field(default_factory=SessionSettings)
    sources: SourcesSettings = field(default_factory=SourcesSettings)
    render: RenderSettings = field(default_factory=RenderSettings)
    sinks: SinksSettings = field(default_factory=SinksSettings)
    engines: EnginesSettings = field(default_factory=EnginesSettings)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source_file: str = ""  # the TOML file that was read, "" for none

    def to_dict(self) -> dict[str, Any]:
        """The configuration in the TOML file's layout (JSON-serialisable)."""
        out: dict[str, Any] = {
            "model": dataclasses.asdict(self.model),
            "session": dataclasses.asdict(self.session),
            "sources": {
                kind: {"use": self.sources.slot(kind).use, **dict(self.sources.slot(kind).options)}
                for kind in SOURCE_KINDS
            },
            "render": {"use": self.render.use, **dict(self.render.options)},
            "sinks": {"use": list(self.sinks.use), **{k: dict(v) for k, v in self.sinks.options.items()}},
            "engines": {k: dict(v) for k, v in self.engines.options.items()},
            "plugins": {k: dict(v) for k, v in self.plugins.items()},
        }
        return out


_SECTIONS = ("model", "session", "sources", "render", "sinks", "engines", "plugins")


# --------------------------------------------------------------------------------------------
# Building from nested dicts
# --------------------------------------------------------------------------------------------
def _typed_section(cls: type, where: str, raw: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise unknown_option(f"{where}.{key}", fields)
    kwargs = {}
    for name, value in raw.items():
        meta = fields[name].metadata
        option = f"{where}.{name}"
        kwargs[name] = coerce(
            option,
            value,
            meta["type"],
            choices=meta.get("choices", ()),
            minimum=meta.get("minimum"),
            maximum=meta.get("maximum"),
        )
        check: Callable[[Any], str | None] | None = meta.get("check")
        problem = check(kwargs[name]) if check else None
        if problem:
            raise ConfigError(option, f"{problem}, got {value!r}")
    return cls(**kwargs)


def _use(where: str, value: Any) -> str:
    name = coerce(where, value, str)
    problem = _check_name(name)
    if problem:
        raise ConfigError(where, f"{problem}, got {value!r}")
    return name


def _slot(where: str, raw: Any, default: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ConfigError(where, 'expected a table (use = "NAME" and the source\'s options)')
    options = {k: v for k, v in raw.items() if k != "use"}
    for key, value in options.items():
        if isinstance(value, Mapping):
            raise ConfigError(f"{where}.{key}", "expected a value, got a table")
    return _use(f"{where}.use", raw.get("use", default)), options


def _sources(raw: Any) -> SourcesSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError("sources", "expected a table")
    for key in raw:
        if key not in SOURCE_KINDS:
            raise unknown_option(f"sources.{key}", SOURCE_KINDS, "source kind")
    defaults = SourcesSettings()
    slots = {}
    for kind in SOURCE_KINDS:
        use, options = _slot(f"sources.{kind}", raw.get(kind, {}), defaults.slot(kind).use)
        slots[kind] = SourceSlot(use, options)
    return SourcesSettings(**slots)


def _render(raw: Any) -> RenderSettings:
    use, options = _slot("render", raw, RenderSettings().use)
    return RenderSettings(use, options, chosen="use" in raw)


def _sinks(raw: Any) -> SinksSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError("sinks", "expected a table")
    use = tuple(_use("sinks.use", n) for n in coerce("sinks.use", raw.get("use", ()), tuple))
    if len(set(use)) != len(use):
        raise ConfigError("sinks.use", f"a sink is listed twice in {list(use)!r}")
    options = {}
    for name, table in raw.items():
        if name == "use":
            continue
        _use(f"sinks.{name}", name)
        if not isinstance(table, Mapping):
            raise ConfigError(f"sinks.{name}", "expected a table of the sink's options")
        options[name] = dict(table)
    return SinksSettings(use, options)


def _engines(raw: Any) -> EnginesSettings:
    if not isinstance(raw, Mapping):
        raise ConfigError("engines", "expected a table")
    options = {}
    for name, table in raw.items():
        _use(f"engines.{name}", name)
        if not isinstance(table, Mapping):
            raise ConfigError(f"engines.{name}", "expected a table of the engine's options")
        options[name] = dict(table)
    return EnginesSettings(options)


def _plugins(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping):
        raise ConfigError("plugins", "expected a table")
    out = {}
    for name, table in raw.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"plugins.{name}", "expected a table of the plugin's settings")
        out[name] = dict(table)
    return out


def config_from_dict(raw: Mapping[str, Any], source_file: str = "") -> AppConfig:
    """Validate a nested mapping in the TOML layout (missing keys get defaults)."""
    for key in raw:
        if key not in _SECTIONS:
            raise unknown_option(key, _SECTIONS, "section")
    return AppConfig(
        model=_typed_section(ModelSettings, "model", raw.get("model", {})),
        session=_typed_section(SessionSettings, "session", raw.get("session", {})),
        sources=_sources(raw.get("sources", {})),
        render=_render(raw.get("render", {})),
        sinks=_sinks(raw.get("sinks", {})),
        engines=_engines(raw.get("engines", {})),
        plugins=_plugins(raw.get("plugins", {})),
        source_file=source_file,
    )


# --------------------------------------------------------------------------------------------
# Overrides and loading
# --------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, str]:
    """``"section.key=value"`` -> ``("section.key", "value")``; the value stays a string and is
    converted to the option's type on validation."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key or any(not part for part in key.split(".")):
        raise ConfigError("--set", f"expected SECTION.KEY=VALUE, got {text!r}")
    return key, value


def _apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    section = parts[0]
    if section not in _SECTIONS:
        raise unknown_option(section, _SECTIONS, "section")
    nested = {"sources": 3, "plugins": 3, "engines": 3}.get(section)
    if nested and len(parts) != nested:
        raise ConfigError(key, f"expected {section}.NAME.KEY")
    if section == "sinks" and not ((len(parts) == 2 and parts[1] == "use") or len(parts) == 3):
        raise ConfigError(key, "expected sinks.use or sinks.NAME.KEY")
    if section in ("model", "session", "render") and len(parts) != 2:
        raise ConfigError(key, f"expected {section}.KEY")
    table = raw
    for index, part in enumerate(parts[:-1]):
        child = table.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: index + 1]), "expected a table")
        table = child
    table[parts[-1]] = value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError("", f"config file {str(path)!r} not found") from None
    except IsADirectoryError:
        raise ConfigError("", f"config file {str(path)!r} is a directory") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"config file {str(path)!r} is not valid TOML: {error}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str | tuple[str, Any]] = (),
    *,
    environ: Mapping[str, str] | None = None,
) -> AppConfig:
    """Defaults <- TOML file <- overrides, validated.

    `path`: the TOML file; ``None`` falls back to ``$AVATARFORCING_CONFIG`` (unset or empty:
    no file). `overrides`: ``"section.key=value"`` strings (``--set``) or ``(key, value)``
    pairs (dedicated flags), applied in order. Raises `ConfigError`.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    raw: dict[str, Any] = {}
    source_file = ""
    if path is not None and str(path) != "":
        file_path = Path(path).expanduser()
        raw = _read_toml(file_path)
        source_file = str(file_path)
    for override in overrides:
        key, value = parse_override(override) if isinstance(override, str) else override
        _apply_override(raw, key, value)
    return config_from_dict(raw, source_file)


def _masked_table(host: Any, registry: str, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` (the options of plugin `name` in `registry`) with its secret options masked; an
    unknown name has no declared secrets and is shown as given."""
    try:
        specs = host.lookup(registry, name).spec.options
    except Exception:  # an unknown or ambiguous name: `run` reports it, printing must not fail
        return dict(values)
    return masked(specs, values)


def printable_dict(config: AppConfig, host: Any) -> dict[str, Any]:
    """`AppConfig.to_dict()` with every option that its plugin declares `secret` (e.g.
    ``sinks.obs.password``) shown as ``"***"`` when set: what a printed configuration shows.
    `host` (a `PluginHost`) knows the plugins' option specs."""
    data = config.to_dict()
    for kind in SOURCE_KINDS:
        slot = data["sources"][kind]
        if slot["use"]:
            data["sources"][kind] = _masked_table(host, kind, slot["use"], slot)
    data["render"] = _masked_table(host, "renderers", config.render.use, data["render"])
    for name in config.sinks.options:
        data["sinks"][name] = _masked_table(host, "sinks", name, data["sinks"][name])
    for name in config.engines.options:
        data["engines"][name] = _masked_table(host, "engines", name, data["engines"][name])
    return data


def to_toml(config: AppConfig, host: Any = None) -> str:
    """Render a configuration as TOML (for ``avatarforcing config``); with `host`, secret
    options are masked (`printable_dict`)."""
    data = config.to_dict() if host is None else printable_dict(config, host)
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'

    def key(name: str) -> str:
        return name if re.match(r"^[A-Za-z0-9_-]+$", name) else scalar(name)

    def table(prefix: str, values: Mapping[str, Any]) -> None:
        plain = {k: v for k, v in values.items() if not isinstance(v, Mapping)}
        if plain or len(plain) == len(values):  # a header only where it holds keys (or is empty)
            lines.append(f"[{prefix}]")
            lines.extend(f"{key(k)} = {scalar(v)}" for k, v in plain.items())
            lines.append("")
        for k, v in values.items():
            if isinstance(v, Mapping):
                table(f"{prefix}.{key(k)}", v)

    for section, values in data.items():
        table(section, values)
    return "\n".join(lines)
