"""``avatarforcing plugins [--json]``: installed plugins, their hooks and what they provide."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.host import PLUGINS_ENV

_LABELS = {
    "avatar_audio": "avatar-audio sources",
    "user_audio": "user-audio sources",
    "user_video": "user-video sources",
    "avatar_video": "avatar-video sources",
    "renderers": "renderers",
    "sinks": "sinks",
    "engines": "engines",
    "commands": "commands",
}


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _run(args: argparse.Namespace, context) -> int:
    host = context.host
    infos = host.plugin_infos()
    if args.json:
        context.print_json(
            {
                "plugins": [info.to_dict() for info in infos],
                "restricted_to": None if host.requested is None else list(host.requested),
                "missing": list(host.missing),
                "load_errors": dict(host.load_errors),
            }
        )
        return 0
    console = context.console
    if host.requested is not None:
        console.print(escape(f"{PLUGINS_ENV}={','.join(host.requested)!r} restricts the plugins loaded"))
    table = Table(title="avatarforcing plugins", header_style="bold")
    table.add_column("plugin")
    table.add_column("package")
    table.add_column("hooks", overflow="fold")
    table.add_column("provides", overflow="fold")
    for info in infos:
        package = f"{info.distribution} {info.version}".strip() or info.module
        provides = "\n".join(f"{_LABELS[kind]}: {', '.join(names)}" for kind, names in info.provides.items())
        table.add_row(escape(info.name), escape(package), "\n".join(info.hooks), escape(provides) or "-")
    if infos:
        console.print(table)
    else:
        console.print("no plugins loaded")
    for name in host.missing:
        console.print(f"[yellow]requested but not installed:[/] {escape(name)}")
    for name, error in sorted(host.load_errors.items()):
        console.print(f"[red]failed to load:[/] {escape(name)}: {escape(error)}")
    return 0


COMMAND = CommandSpec(
    name="plugins",
    help="list installed plugins, their hooks and the sources/renderers/sinks they provide",
    configure=_configure,
    run=_run,
)
