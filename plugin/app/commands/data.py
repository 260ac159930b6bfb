"""``avatarforcing data prepare VIDEO... --out DIR [--layout side-by-side|two-tracks]
[--space official|default] [--heldout-fraction F] [--model SPEC]``.

Turns dyadic conversation videos into a training dataset (`avatarforcing.plugin.app.data_prepare`,
format of `avatarforcing.engine.training.dataset`): two items per conversation, one per party
as the avatar; held-out conversations chosen deterministically from their ids. ``--model``
(official space only) picks the audio encoder and motion autoencoder, like ``render --model``.
Exit status 0 written, 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    prepare = actions.add_parser(
        "prepare",
        help="dyadic conversation videos -> training dataset",
        description="Extract per-frame audio features and motion of both parties of conversation videos "
        "(two faces side by side, or one file per party) into a training dataset. See docs/training.md.",
        allow_abbrev=False,
    )
    prepare.add_argument(
        "videos",
        metavar="VIDEO",
        nargs="+",
        type=Path,
        help="side-by-side: one file per conversation; two-tracks: files in pairs (party A, party B)",
    )
    prepare.add_argument(
        "--out", metavar="DIR", type=Path, required=True, help="dataset directory (created or extended)"
    )
    prepare.add_argument(
        "--layout",
        choices=("side-by-side", "two-tracks"),
        default="side-by-side",
        help="side-by-side: left/right halves, stereo (left channel = left party) or mono audio; "
        "two-tracks: one video with its own audio per party (default side-by-side)",
    )
    prepare.add_argument(
        "--space",
        choices=("official", "default"),
        default="default",
        help="official: wav2vec2 features and motion-autoencoder latents; default: log-mel features and "
        "the 13 interpretable face parameters (default)",
    )
    prepare.add_argument(
        "--heldout-fraction", metavar="F", type=float, default=0.1, help="held-out conversations (default 0.1)"
    )
    prepare.add_argument(
        "--model",
        metavar="SPEC",
        help="official space: weights (a directory or formula:PRESET; default: the configured weights)",
    )


def _space(args: argparse.Namespace, context):
    from avatarforcing.plugin.app.data_prepare import DefaultSpace, OfficialSpace

    if args.space == "default":
        if args.model:
            raise CommandError("--model applies to --space official only", exit_code=2)
        return DefaultSpace()
    from avatarforcing.plugin.app.model_loading import load_model_from_spec

    config = context.load_config()
    model, source = load_model_from_spec(args.model, config.model, environ=context.environ)
    context.err_console.print(escape(f"encoders: {source.description}"))
    return OfficialSpace(model, source.description)


def _run(args: argparse.Namespace, context) -> int:
    import torch

    from avatarforcing.engine.training.dataset import DatasetError
    from avatarforcing.integrations.face_detection import FaceDetectorUnavailable
    from avatarforcing.integrations.face_params import FaceParamsUnavailable
    from avatarforcing.integrations.media import MediaError
    from avatarforcing.plugin.app.data_prepare import DataPrepareError, heldout_ids, plan_conversations, prepare_dataset

    console = context.err_console
    try:
        conversations = plan_conversations(args.videos, args.layout)
        heldout_ids([], args.heldout_fraction)  # check the fraction before loading anything
        if args.out.exists() and not args.out.is_dir():
            raise DataPrepareError(f"--out: {args.out} exists and is not a directory")
        space = _space(args, context)
        with torch.inference_mode():
            report = prepare_dataset(
                args.out,
                conversations,
                space,
                args.heldout_fraction,
                lambda done, total, name: console.print(escape(f"{done}/{total} {name}")),
            )
    except (DataPrepareError, DatasetError, MediaError, FaceParamsUnavailable, FaceDetectorUnavailable) as error:
        raise CommandError(str(error), exit_code=2) from None
    for conv_id, notes in report.conversations.items():
        console.print(
            escape(
                f"{conv_id}: {notes['split']}, {notes['frames']} frames, faces {notes['face_frames']}, audio {notes['audio']}"
            )
        )
    context.console.print(
        escape(
            f"wrote {len(report.items['train'])} train and {len(report.items['heldout'])} held-out items to {args.out}"
        )
    )
    return 0


COMMAND = CommandSpec(
    name="data", help="prepare training data (data prepare VIDEO... --out DIR)", configure=_configure, run=_run
)
