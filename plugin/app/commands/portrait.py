"""``avatarforcing portrait check IMG [--sheet OUT.png] [--size N] [--json]``: is this photo fit
for the ``portrait`` renderer?

Prints what was found (image size, faces, face box and height, head pose, the photo's own
motion parameters, how much of the picture the person covers, warnings) and, with ``--sheet``,
writes a contact sheet of the portrait animated at extreme poses and expressions. Exit 0 when
the photo can be animated, 1 (one line saying why and what to do) when it cannot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.commands._output import key_value_table


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="portrait_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="check a portrait photo for the portrait renderer",
        description="Find the face, landmarks and person matte of a photo, say whether the portrait "
        "renderer can animate it, and optionally write a contact sheet of it animated.",
        allow_abbrev=False,
    )
    check.add_argument("image", metavar="IMG", type=Path, help="the portrait photo (JPEG, PNG...)")
    check.add_argument("--sheet", metavar="OUT.png", type=Path, help="write a contact sheet of the animated portrait")
    check.add_argument(
        "--size", type=int, default=512, metavar="N", help="side of the square frames rendered for the sheet (512)"
    )
    check.add_argument(
        "--background",
        default="original",
        choices=("original", "transparent", "green", "blue", "white", "black"),
        help="background of the sheet's frames (original)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")


def _sheet(analysis, args: argparse.Namespace, report: dict) -> None:
    """Render the contact sheet of `analysis` into ``args.sheet``; note timings in `report`."""
    import time

    import cv2

    from avatarforcing.engine.embedded.portrait_rig import PortraitRig, contact_sheet
    from avatarforcing.integrations.portrait_analysis import frame_portrait
    from avatarforcing.plugin.builtins.renderers.portrait import rig_config

    if not 64 <= args.size <= 4096:
        raise CommandError(f"--size must be between 64 and 4096, got {args.size}", exit_code=2)
    start = time.perf_counter()
    image, landmarks, matte = frame_portrait(analysis, (args.size, args.size))
    rig = PortraitRig(image, landmarks, matte, rig_config(args.background))
    report["rig_seconds"] = round(time.perf_counter() - start, 3)
    sheet = contact_sheet(rig, tile=min(args.size, 256))
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise CommandError(f"cannot write the contact sheet to {args.sheet} (use a .png or .jpg name)")
    report["sheet"] = str(args.sheet)


def _run(args: argparse.Namespace, context) -> int:
    import time

    from avatarforcing.integrations.portrait_analysis import PortraitError, analyse_portrait

    start = time.perf_counter()
    try:
        analysis = analyse_portrait(args.image)
    except PortraitError as error:
        raise CommandError(str(error)) from error
    report = analysis.summary()
    report["analysis_seconds"] = round(time.perf_counter() - start, 3)
    if args.sheet is not None:
        _sheet(analysis, args, report)
    if args.json:
        context.print_json({"ok": True, **report})
        return 0
    console = context.console
    warnings = report.pop("warnings")
    console.print(key_value_table(f"portrait {report['source']}", report))
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print("[green]ok[/]: the portrait renderer can animate this photo")
    return 0


COMMAND = CommandSpec(
    name="portrait",
    help="check a portrait photo for the portrait renderer (face, pose, matte) and draw a contact sheet",
    configure=_configure,
    run=_run,
)
