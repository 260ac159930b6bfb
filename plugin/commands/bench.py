"""``avatarforcing bench [--json] [--config NAME] [--blocks N] [--threads N]``.

Calls `avatarforcing.engine.bench.run_benchmark(config_name, blocks, threads)` (plus ``nfe``
from ``[model] nfe`` and ``device`` from ``[model] device`` unless it is ``auto``, when the
function accepts them) and prints a table or, with ``--json``, exactly one JSON object. The
result may be a dict, or an object with ``to_dict()``, or a dataclass. Defaults come from the
configuration: ``--config`` from ``[model] preset``, ``--threads`` from ``[model] threads``
(0 = the engine decides, passed as ``None``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any, Mapping

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.commands._output import format_value, key_value_table
from avatarforcing.plugin.commands.reference import load_engine_function
from avatarforcing.plugin.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--config",
        dest="model_config",
        metavar="NAME",
        default=None,
        help="model configuration to time (default: [model] preset, e.g. official or fixture_small)",
    )
    parser.add_argument("--blocks", metavar="N", default=8, help="blocks to time (default 8)")
    parser.add_argument("--threads", metavar="N", default=None, help="CPU threads (default: [model] threads)")


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.options import coerce

    overrides = []
    if args.model_config is not None:
        overrides.append(("model.preset", args.model_config))
    if args.threads is not None:
        overrides.append(("model.threads", args.threads))
    config = context.load_config(overrides)
    blocks = coerce("--blocks", args.blocks, int, minimum=1, maximum=100000)
    if args.threads is not None:
        coerce("--threads", args.threads, int, minimum=1, maximum=1024)
    threads = config.model.threads or None
    run_benchmark = load_engine_function("avatarforcing.engine.bench", "run_benchmark", "the benchmark")
    extra = {}
    parameters = inspect.signature(run_benchmark).parameters
    if "nfe" in parameters:
        extra["nfe"] = config.model.nfe
    if "device" in parameters and config.model.device != "auto":
        extra["device"] = config.model.device
    result = as_dict(run_benchmark(config.model.preset, blocks, threads, **extra))
    if args.json:
        context.print_json(result)
        return 0
    title = f"bench {config.model.preset}, {blocks} blocks, threads {threads or 'auto'}"
    stages = result.get("stages")
    if isinstance(stages, Mapping) and all(isinstance(v, Mapping) for v in stages.values()):
        context.console.print(stage_table(title, stages))
        result = {k: v for k, v in result.items() if k != "stages"}
    context.console.print(key_value_table(title, result))
    return 0


def as_dict(result: Any) -> dict[str, Any]:
    """A benchmark result as a plain dict."""
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result or {})


def stage_table(title: str, stages: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per stage, one column per measured quantity."""
    columns = list(dict.fromkeys(key for values in stages.values() for key in values))
    table = Table(title=escape(f"{title}: per block"), header_style="bold")
    table.add_column("stage")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for stage, values in stages.items():
        table.add_row(escape(stage), *(escape(format_value(values.get(c, ""))) for c in columns))
    return table


COMMAND = CommandSpec(
    name="bench",
    help="time the engine's stages per block",
    configure=_configure,
    run=_run,
)
