"""``avatarforcing reference run FIXTURE_DIR --out OUT.npz``: reproduce a reference fixture.

Calls `avatarforcing.engine.official.fixture_runner.run_reference(fixture_dir, out_path) -> dict` and prints
the summary it returns.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.commands._output import key_value_table


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="reference_action", metavar="ACTION", required=True)
    run = actions.add_parser(
        "run",
        help="run the engine on a fixture's inputs and write its outputs",
        description="Read fixture_meta.json and inputs.npz from FIXTURE_DIR, run the model with "
        "the fixture's formula weights and stored noise, write the outputs to OUT.npz.",
        allow_abbrev=False,
    )
    run.add_argument("fixture_dir", metavar="FIXTURE_DIR", type=Path)
    run.add_argument("--out", metavar="OUT.npz", type=Path, required=True)
    run.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def load_engine_function(module_name: str, function: str, feature: str):
    """``module.function`` from the engine, imported now; `CommandError` if this build lacks it."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and module_name.startswith(error.name):
            raise CommandError(f"{feature} is not available in this build ({module_name} is missing)") from None
        raise
    try:
        return getattr(module, function)
    except AttributeError:
        raise CommandError(f"{feature} is not available in this build ({module_name}.{function} is missing)") from None


def describe(value):
    """Arrays as ``{"shape": [...], "dtype": "..."}`` (the arrays themselves are in OUT.npz)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    return value


def _run(args: argparse.Namespace, context) -> int:
    fixture_dir: Path = args.fixture_dir
    if not fixture_dir.is_dir():
        raise CommandError(f"fixture directory {str(fixture_dir)!r} not found", exit_code=2)
    for name in ("fixture_meta.json", "inputs.npz"):
        if not (fixture_dir / name).is_file():
            raise CommandError(f"{str(fixture_dir / name)!r} not found (a fixture needs {name})", exit_code=2)
    if args.out.parent and not args.out.parent.exists():
        raise CommandError(f"output directory {str(args.out.parent)!r} does not exist", exit_code=2)
    run_reference = load_engine_function(
        "avatarforcing.engine.official.fixture_runner", "run_reference", "the reference runner"
    )
    summary = dict(run_reference(fixture_dir, args.out) or {})
    if args.json:
        context.print_json({key: describe(value) for key, value in summary.items()})
    else:
        context.console.print(key_value_table(f"reference run -> {args.out}", summary or {}))
    return 0


COMMAND = CommandSpec(
    name="reference",
    help="reproduce a numerical reference fixture (reference run FIXTURE_DIR --out OUT.npz)",
    configure=_configure,
    run=_run,
)
