"""``avatarforcing synth --out DIR --conversations N --seconds S --seed N [--heldout-fraction F] [--voicing-history]
[--nod-loss-weight W]``.

Writes a training dataset of synthetic two-party conversations for the default avatar
(`avatarforcing.engine.embedded.synthetic_dataset`): both sides of every conversation as items,
the last conversations held out; audio rows of log-mel values, as the packaged model takes them,
or with the voicing history after them with ``--voicing-history`` (for a model trained with
it); with ``--nod-loss-weight W`` each item carries loss weights (the head pitch's error counts
W times after the user's listener pauses). Deterministic given the arguments. Exit status 0 written,
2 bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="dataset directory (created)")
    parser.add_argument("--conversations", metavar="N", type=int, default=100, help="conversations (default 100)")
    parser.add_argument(
        "--seconds", metavar="S", type=float, default=40.0, help="length of each conversation (default 40)"
    )
    parser.add_argument("--seed", metavar="N", type=int, default=0, help="seed (default 0)")
    parser.add_argument(
        "--heldout-fraction", metavar="F", type=float, default=0.1, help="held-out conversations (default 0.1)"
    )
    parser.add_argument(
        "--no-espeak", action="store_true", help="use the built-in formant synthesiser even if espeak-ng is installed"
    )
    parser.add_argument(
        "--voicing-history",
        action="store_true",
        help="append each party's voicing history to its audio rows (84 wide), for a model trained with it",
    )
    parser.add_argument(
        "--nod-loss-weight",
        metavar="W",
        type=float,
        default=1.0,
        help="write loss weights: the head pitch's training error counts W times after the user's listener pauses "
        "(default 1: none written)",
    )


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.engine.embedded.synthetic_dataset import SynthSettings, write_synthetic_dataset

    try:
        settings = SynthSettings(
            args.conversations,
            args.seconds,
            args.seed,
            args.heldout_fraction,
            False if args.no_espeak else None,
            voicing_history=args.voicing_history,
            nod_loss_weight=args.nod_loss_weight,
        )
    except ValueError as error:
        raise CommandError(str(error), exit_code=2) from None
    if args.out.exists() and any(args.out.iterdir()):
        raise CommandError(f"--out: {args.out} exists and is not empty; choose a new directory", exit_code=2)
    console = context.err_console

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            console.print(f"{done}/{total} conversations")

    info = write_synthetic_dataset(args.out, settings, progress)
    context.console.print(escape(f"wrote {2 * settings.conversations} items ({info['speech']} speech) to {args.out}"))
    return 0


COMMAND = CommandSpec(
    name="synth", help="write a synthetic conversation dataset for the default avatar", configure=_configure, run=_run
)
