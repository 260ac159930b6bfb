"""``avatarforcing eval --data DIR [--checkpoint CKPT] [--split heldout] [--out TABLE.md]
[--json FILE] [--drop-user] [--nfe N] [--seed N] [--no-smoothing] [--guidance fixed|voice]``:
sample every conversation side of the split with the streaming generator and print the metric
table (markdown; JSON with --json), each metric for the generated motion and for the ground
truth (jitter, variance, diversity, lip sync, smile mirroring, nod response, pause-locked head
pitch; rPCC has no ground-truth value). Without ``--checkpoint`` the embedded avatar shipped in
the package is evaluated, so anyone can re-check docs/default_avatar.md. On the default motion
space the generated motion goes through the `default` engine's output smoothing first (what a
session shows); ``--no-smoothing`` evaluates the raw samples. Guidance: ``fixed`` (default)
samples with ``[model]`` ``a_cfg_scale`` / ``u_cfg_scale`` throughout; ``voice`` switches per
block as a live session's speak/listen policy does: ``[session]`` ``speak_*_cfg`` while the
avatar's voice was heard within ``vad_release_ms``, ``listen_*_cfg`` otherwise (voice activity
from the dataset's log-mel audio features; the default space only).
Exit status 0 evaluated, 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.schemas.media_rates import FRAME_RATE


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", type=Path, required=True, help="dataset directory")
    parser.add_argument(
        "--checkpoint",
        metavar="CKPT",
        type=Path,
        default=None,
        help="flow-transformer checkpoint folder (default: the embedded avatar in the package)",
    )
    parser.add_argument("--split", choices=("heldout", "train"), default="heldout")
    parser.add_argument("--out", metavar="TABLE.md", type=Path, help="write the markdown table here")
    parser.add_argument("--json", dest="json_file", metavar="FILE", type=Path, help="write the metrics as JSON here")
    parser.add_argument(
        "--drop-user", action="store_true", help="sample with the user's conditions null (no listening)"
    )
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-smoothing",
        action="store_true",
        help="evaluate the raw samples, without the default engine's output smoothing",
    )
    parser.add_argument(
        "--guidance",
        choices=("fixed", "voice"),
        default="fixed",
        help="fixed: [model] guidance scales throughout; voice: the session's speak/listen scales per block",
    )


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.engine.checkpoint_io import CheckpointError
    from avatarforcing.engine.embedded.smoothing import MotionSmoother
    from avatarforcing.engine.sampler import GuidanceScales
    from avatarforcing.engine.training.dataset import DatasetError, read_manifest
    from avatarforcing.engine.training.evaluation import evaluate_checkpoint
    from avatarforcing.engine.training.metrics import markdown_table

    config = context.load_config()
    if args.guidance == "voice":
        session = config.session
        guidance = GuidanceScales(session.speak_a_cfg, session.speak_u_cfg)
        listen = GuidanceScales(session.listen_a_cfg, session.listen_u_cfg)
        release_frames = round(session.vad_release_ms * FRAME_RATE / 1000.0)
    else:
        guidance, listen, release_frames = GuidanceScales(config.model.a_cfg_scale, config.model.u_cfg_scale), None, 0
    try:
        smoothing = None
        if not args.no_smoothing and read_manifest(args.data).get("space") == "default":
            smoothing = MotionSmoother
        table = evaluate_checkpoint(
            args.data,
            args.checkpoint,
            args.split,
            args.drop_user,
            args.nfe,
            guidance,
            seed=args.seed,
            smoothing=smoothing,
            listen=listen,
            release_frames=release_frames,
        )
    except (DatasetError, CheckpointError, ValueError) as error:
        raise CommandError(str(error), exit_code=2) from None
    text = markdown_table(table)
    if args.out:
        args.out.write_text(text)
    if args.json_file:
        args.json_file.write_text(json.dumps(table, indent=2) + "\n")
    context.console.print(escape(text))
    return 0


COMMAND = CommandSpec(
    name="eval", help="evaluate a trained flow transformer on held-out conversations", configure=_configure, run=_run
)
