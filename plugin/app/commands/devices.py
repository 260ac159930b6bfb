"""``avatarforcing devices [--json]``: audio inputs/outputs (loopbacks marked), capturable
windows and monitors, cameras — the names that the live sources' options accept."""

from __future__ import annotations

import argparse

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.api.types import CommandSpec


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def collect() -> dict:
    """Everything the command shows, JSON-serialisable."""
    from avatarforcing.integrations.audio_devices import (
        AudioDeviceError,
        how_to_get_loopback,
        import_sounddevice,
        list_audio_devices,
    )
    from avatarforcing.integrations.screen_capture import find_windows, list_monitors
    from avatarforcing.integrations.webcam import list_cameras

    audio = list_audio_devices()
    problems = []
    try:
        import_sounddevice()
    except AudioDeviceError as error:
        problems.append(str(error))
    if not any(d.is_loopback for d in audio):
        problems.append(f"no loopback input found: {how_to_get_loopback()}")
    monitors = list_monitors()
    return {
        "audio_inputs": [d.to_dict() for d in audio if d.kind == "input"],
        "audio_outputs": [d.to_dict() for d in audio if d.kind == "output"],
        "monitors": [
            {"index": i, "left": m.left, "top": m.top, "width": m.width, "height": m.height}
            for i, m in enumerate(monitors)
        ],
        "windows": [w.to_dict() for w in find_windows("")] if monitors else [],
        "cameras": list_cameras(),
        "problems": problems,
    }


def _run(args: argparse.Namespace, context) -> int:
    found = collect()
    if args.json:
        context.print_json(found)
        return 0
    console = context.console
    for key, title in (
        ("audio_inputs", "audio inputs (sources: microphone, loopback)"),
        ("audio_outputs", "audio outputs"),
    ):
        table = Table(title=title, header_style="bold")
        for column in ("device", "description", "api", "channels", "rate", "default", "loopback"):
            table.add_column(column, overflow="fold")
        for d in found[key]:
            loop = (
                f"yes (of {d['monitor_of']})"
                if d["is_loopback"] and d["monitor_of"]
                else ("yes" if d["is_loopback"] else "")
            )
            table.add_row(
                escape(d["name"]),
                escape(d["description"]),
                escape(d["api"]),
                str(d["channels"]),
                f"{d['sample_rate']:.0f}" if d["sample_rate"] else "",
                "*" if d["is_default"] else "",
                loop,
            )
        console.print(table if found[key] else f"{title}: none")
    table = Table(title="screen (source: screen; monitor 0 = all)", header_style="bold")
    for column in ("monitor / window", "geometry"):
        table.add_column(column, overflow="fold")
    for m in found["monitors"]:
        table.add_row(f"monitor {m['index']}", f"{m['width']}x{m['height']}+{m['left']}+{m['top']}")
    for w in found["windows"]:
        table.add_row(escape(w["title"]), f"{w['width']}x{w['height']}+{w['left']}+{w['top']}")
    console.print(table if found["monitors"] else "screen: no display")
    console.print("cameras (source: webcam): " + (", ".join(map(str, found["cameras"])) or "none"))
    for problem in found["problems"]:
        console.print(f"[yellow]{escape(problem)}[/]")
    return 0


COMMAND = CommandSpec(
    name="devices",
    help="list audio inputs/outputs (loopbacks marked), windows, monitors and cameras for the live sources",
    configure=_configure,
    run=_run,
)
