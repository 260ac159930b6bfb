"""The ``avatarforcing`` command line: ``main(argv) -> exit status``.

Usage::

    avatarforcing [-c FILE] [--set SECTION.KEY=VALUE ...] [--debug] COMMAND [ARGS]

``-c/--config-file`` and ``--set`` may also follow the command. Exit status: 0 success,
1 failure (e.g. a failed doctor check, an expected error), 2 usage or configuration error,
130 interrupted. Expected errors (`AvatarForcingError`: bad config, unknown plugin names,
missing files) print one line, never a traceback; ``--debug`` shows tracebacks.

Adding a subcommand (built-in): create a module in ``avatarforcing/plugin/app/commands/`` (the
``plugin/app/commands/`` folder of the repository) that defines ``COMMAND = CommandSpec(name, help,
configure, run)`` (or ``COMMANDS = [...]``); it is discovered automatically, in name order.
Keep its top-level imports light (argparse, rich): every command module is imported to build
the parser; import torch and friends inside ``run``. Plugins add commands with the
``register_commands`` hook. ``run(args, context)`` gets the parsed `argparse.Namespace` and a
`CommandContext`; use ``context.load_config(extra_overrides)`` for the effective config (your
dedicated flags go in as ``("section.key", value)`` pairs so they are validated like
``--set``), ``context.console`` for rich output and ``context.print_json`` for ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, TextIO

from rich.console import Console

from avatarforcing.plugin.api.errors import AvatarForcingError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.config import AppConfig, load_config
from avatarforcing.plugin.host import PluginHost, build_plugin_host

PROG = "avatarforcing"


@dataclass
class CommandContext:
    """What a command's ``run(args, context)`` gets besides its arguments."""

    host: PluginHost
    stdout: TextIO
    stderr: TextIO
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _configured: AppConfig | None = None

    @property
    def console(self) -> Console:
        """Rich console on stdout (plain text when not a terminal)."""
        return Console(file=self.stdout, highlight=False, soft_wrap=True)

    @property
    def err_console(self) -> Console:
        return Console(file=self.stderr, highlight=False, soft_wrap=True)

    def load_config(self, extra_overrides: Sequence[str | tuple[str, Any]] = ()) -> AppConfig:
        """Defaults <- config file <- ``--set`` <- `extra_overrides` (a command's flags);
        plugins' ``configure`` hook sees the first configuration loaded. Raises `ConfigError`."""
        config = load_config(self.config_file, [*self.overrides, *extra_overrides], environ=self.environ)
        if self._configured is None:
            self.host.configure(config)
            self._configured = config
        return config

    def print_json(self, value: Any) -> None:
        """One JSON document on stdout."""
        self.stdout.write(json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _version() -> str:
    try:
        return metadata.version("avatarforcing")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def _add_common_options(parser: argparse.ArgumentParser, after_command: bool) -> None:
    suppress = argparse.SUPPRESS if after_command else None
    parser.add_argument(
        "-c",
        "--config-file",
        metavar="FILE",
        default=suppress,
        help="TOML configuration file (default: $AVATARFORCING_CONFIG, else built-in defaults)",
    )
    parser.add_argument(
        "--set",
        dest="set_after" if after_command else "set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[] if not after_command else argparse.SUPPRESS,
        help="override one configuration option (repeatable), e.g. --set model.nfe=6",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if after_command else False,
        help="show tracebacks of errors",
    )


def build_parser(commands: Sequence[CommandSpec]) -> argparse.ArgumentParser:
    """The argument parser for `commands` (each becomes a subcommand)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Avatar Forcing: a real-time interactive head avatar for calls and streams.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    _add_common_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for spec in commands:
        child = sub.add_parser(spec.name, help=spec.help, description=spec.help, allow_abbrev=False)
        spec.configure(child)
        _add_common_options(child, after_command=True)
        child.set_defaults(_command=spec)
    return parser


def collect_commands(host: PluginHost, stderr: TextIO) -> list[CommandSpec]:
    """Built-in commands, then plugin commands whose names are free (conflicts are reported on
    `stderr` and skipped)."""
    from avatarforcing.plugin.app.commands import builtin_commands, plugin_commands

    builtins, errors = builtin_commands()
    for module, error in errors.items():
        stderr.write(f"{PROG}: warning: command module {module} failed to load: {error}\n")
    accepted, refused = plugin_commands(host, {c.name for c in builtins})
    for line in refused:
        stderr.write(f"{PROG}: warning: {line}\n")
    return [*builtins, *accepted]


def run_cli(
    argv: Sequence[str],
    host: PluginHost,
    stdout: TextIO,
    stderr: TextIO,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Parse `argv` and run the command with an already built plugin host (tests pass a host
    with extra plugins registered). Returns the exit status; never raises for expected
    errors."""
    debug = "--debug" in argv
    try:
        parser = build_parser(collect_commands(host, stderr))
        try:
            args = parser.parse_args(list(argv))
        except SystemExit as exit_:  # argparse: usage errors (2), --help/--version (0)
            return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
        spec: CommandSpec | None = getattr(args, "_command", None)
        if spec is None:
            parser.print_help(stdout)
            return 2
        debug = bool(args.debug)
        context = CommandContext(
            host=host,
            stdout=stdout,
            stderr=stderr,
            config_file=getattr(args, "config_file", None),
            overrides=[*args.set, *getattr(args, "set_after", [])],
            environ=os.environ if environ is None else environ,
        )
        return int(spec.run(args, context) or 0)
    except AvatarForcingError as error:
        if debug:
            traceback.print_exc(file=stderr)
        stderr.write(f"{PROG}: error: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        stderr.write(f"{PROG}: interrupted\n")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``avatarforcing``: run the CLI with `argv` (default ``sys.argv[1:]``),
    plugins from the entry points, and return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    host = build_plugin_host()
    return run_cli(args, host, sys.stdout, sys.stderr)


if __name__ == "__main__":  # python -m avatarforcing.plugin.app.cli
    sys.exit(main())
