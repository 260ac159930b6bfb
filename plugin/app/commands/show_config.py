"""``avatarforcing config [--json]``: print the effective configuration (after the file,
``--set`` and defaults), as TOML or JSON. A bad value fails with one line naming the option.
Secret options (those a plugin declares ``secret``, e.g. ``sinks.obs.password``) print as
``"***"`` when set, never their value."""

from __future__ import annotations

import argparse

from avatarforcing.plugin.api.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.config import printable_dict, to_toml

    config = context.load_config()
    if args.json:
        context.print_json({"source_file": config.source_file, "config": printable_dict(config, context.host)})
    else:
        if config.source_file:
            context.stdout.write(f"# from {config.source_file}\n")
        context.stdout.write(to_toml(config, context.host))
    return 0


COMMAND = CommandSpec(
    name="config",
    help="print the effective configuration (defaults <- file <- --set)",
    configure=_configure,
    run=_run,
)
