"""``avatarforcing doctor [--json]``: check this machine; exit 1 if any check fails."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.commands._output import STATUS_STYLE


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.doctor import run_doctor

    config = context.load_config()
    report = run_doctor(config, context.host)
    if args.json:
        context.print_json(report.to_dict())
        return report.exit_code
    table = Table(title="avatarforcing doctor", header_style="bold")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in report.checks:
        style = STATUS_STYLE[check.status]
        table.add_row(escape(check.name), f"[{style}]{check.status}[/]", escape(check.detail), escape(check.fix))
    context.console.print(table)
    counts = report.counts()
    context.console.print(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} failed")
    return report.exit_code


COMMAND = CommandSpec(
    name="doctor",
    help="check PyTorch/CUDA, TensorRT, weights, audio, virtual camera, OBS, ffmpeg",
    configure=_configure,
    run=_run,
)
