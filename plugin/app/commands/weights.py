"""``avatarforcing weights fetch|path|verify``: the official weights on this machine.

- ``weights fetch [--from URL_OR_DIR] [--dest DIR] [--manifest FILE] [--accept-license]
  [--force]`` downloads what is missing or wrong (see `avatarforcing.plugin.app.weights`), with
  progress, size/sha256 checks, and the CC BY-NC 4.0 notice, which must be accepted
  (``--accept-license``, or ``y`` at the prompt on a terminal) before a non-commercial file is
  downloaded. Exit 1 when a file could not be fetched.
- ``weights path [DIR] [--reset] [--json]`` shows the weights directory in use (and why), or
  records DIR as the local copy to use.
- ``weights verify [--dir DIR] [--manifest FILE] [--load] [--json]`` checks the files against
  the manifest (``--load``: also loads them strictly into the model); exit 1 on any problem.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.commands._output import STATUS_STYLE

_STATE_STYLE = {
    "ok": STATUS_STYLE["ok"],
    "unverified": STATUS_STYLE["warn"],
    "missing": STATUS_STYLE["fail"],
    "size-mismatch": STATUS_STYLE["fail"],
    "hash-mismatch": STATUS_STYLE["fail"],
}


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download the official checkpoints and wav2vec2-base-960h",
        description="Download the official Avatar Forcing checkpoints (CC BY-NC 4.0) and "
        "wav2vec2-base-960h into the weights directory, checking sizes and hashes.",
        allow_abbrev=False,
    )
    fetch.add_argument(
        "--from",
        dest="base",
        metavar="URL_OR_DIR",
        help="fetch every file from URL_OR_DIR/PATH instead of the manifest URLs (a mirror, or a directory)",
    )
    fetch.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        help="where to put the files (default: the weights directory in use, see `weights path`)",
    )
    fetch.add_argument(
        "--manifest", metavar="FILE", help="JSON manifest replacing the built-in one (paths, URLs, sizes, sha256)"
    )
    fetch.add_argument(
        "--accept-license", action="store_true", help="accept the CC BY-NC 4.0 licence of the official checkpoints"
    )
    fetch.add_argument("--force", action="store_true", help="download again even if a file is present and checks out")
    fetch.add_argument(
        "--timeout", metavar="SECONDS", type=float, default=60.0, help="network timeout per request (default 60)"
    )

    path = actions.add_parser(
        "path",
        help="show the weights directory in use, or record a local copy",
        description="Without DIR: show the weights directory in use and which files are there. "
        "With DIR: record DIR as the local copy of the weights (in the per-user cache).",
        allow_abbrev=False,
    )
    path.add_argument("directory", metavar="DIR", nargs="?", type=Path)
    path.add_argument("--reset", action="store_true", help="forget the recorded local copy")
    path.add_argument("--json", action="store_true", help="print one JSON object")

    verify = actions.add_parser(
        "verify",
        help="check the weights against the manifest",
        description="Check every manifest file in the weights directory (size, sha256 where "
        "known); with --load, also load them strictly into the model.",
        allow_abbrev=False,
    )
    verify.add_argument(
        "--dir", dest="directory", metavar="DIR", type=Path, help="directory to check (default: the one in use)"
    )
    verify.add_argument("--manifest", metavar="FILE", help="JSON manifest replacing the built-in one")
    verify.add_argument(
        "--load", action="store_true", help="also load the checkpoints strictly (needs memory for the full model)"
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")


# -- fetch ------------------------------------------------------------------------------------
def _confirm_license(args: argparse.Namespace, context) -> None:
    from avatarforcing.plugin.app.weights import LICENSE_NOTICE

    context.err_console.print(escape(LICENSE_NOTICE))
    if args.accept_license:
        context.err_console.print("Licence accepted (--accept-license).")
        return
    if sys.stdin is not None and sys.stdin.isatty() and context.stderr.isatty():
        context.stderr.write("Accept this licence and download? [y/N] ")
        context.stderr.flush()
        if sys.stdin.readline().strip().lower() in ("y", "yes"):
            return
        raise CommandError("licence not accepted; nothing was downloaded", exit_code=1)
    raise CommandError(
        "the official checkpoints are CC BY-NC 4.0 (non-commercial): re-run with "
        "--accept-license to accept the licence; nothing was downloaded",
        exit_code=2,
    )


def _progress(context):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = context.err_console
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _fetch(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.weights import active_weights_dir, fetch_weights, load_manifest, plan_fetch

    config = context.load_config()
    manifest = load_manifest(args.manifest)
    active = active_weights_dir(config.model, context.environ)
    destination = (args.dest.expanduser() if args.dest else active.path).resolve()
    if destination.exists() and not destination.is_dir():
        raise CommandError(f"--dest: {destination} is not a directory", exit_code=2)
    plan = plan_fetch(manifest, destination, args.base, args.force)
    downloads = plan.with_action("download")
    if plan.needs_license:
        _confirm_license(args, context)
    console = context.console
    if downloads:
        console.print(escape(f"fetching {len(downloads)} file(s) into {destination}"))
    with _progress(context) as progress:

        def progress_for(entry):
            task = progress.add_task(escape(entry.path), total=entry.size)
            return lambda done, total: progress.update(task, completed=done, total=total)

        results = fetch_weights(plan, destination, progress_for=progress_for, timeout=args.timeout)
    table = Table(title=escape(f"weights in {destination}"), header_style="bold")
    for column in ("file", "action", "check"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = _STATE_STYLE[result.status.state]
        table.add_row(escape(result.entry.path), result.action, f"[{style}]{escape(result.status.detail)}[/]")
    console.print(table)
    for result in results:
        if result.status.state == "unverified":
            console.print(f"[yellow]warning:[/] {escape(result.entry.path)}: {escape(result.status.detail)}")
    unavailable = [r for r in results if r.action == "unavailable"]
    for result in unavailable:
        console.print(
            f"[red]not fetched:[/] {escape(result.entry.path)} has no direct download URL; get it "
            f"from {escape(result.entry.origin)}, then run `avatarforcing weights fetch --from DIR` "
            "with DIR holding it (or `avatarforcing weights path DIR`)"
        )
    if destination != active.path.expanduser().resolve():
        console.print(
            escape(
                f"note: avatarforcing looks for weights in {active.path} ({active.origin}); run "
                f"`avatarforcing weights path {destination}` to use these"
            )
        )
    return 1 if unavailable else 0


# -- path -------------------------------------------------------------------------------------
def _presence(directory: Path):
    from avatarforcing.plugin.app.weights import DEFAULT_MANIFEST

    return {entry.path: (directory / entry.path).is_file() for entry in DEFAULT_MANIFEST.files}


def _path(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.weights import (
        active_weights_dir,
        forget_weights_dir,
        location_file,
        record_weights_dir,
    )

    config = context.load_config()
    if args.reset and args.directory:
        raise CommandError("weights path: give DIR or --reset, not both", exit_code=2)
    console = context.console
    if args.reset:
        removed = forget_weights_dir(context.environ)
        if not args.json:
            console.print("forgot the recorded local copy" if removed else "no local copy was recorded")
    elif args.directory is not None:
        file = record_weights_dir(args.directory, context.environ)
        if not args.json:
            console.print(escape(f"recorded {args.directory.expanduser().resolve()} in {file}"))
    active = active_weights_dir(config.model, context.environ)
    if args.directory is not None and active.path != args.directory.expanduser().resolve():
        context.err_console.print(
            f"[yellow]warning:[/] {escape(active.origin)} takes precedence: the weights in use "
            f"stay in {escape(str(active.path))}"
        )
    present = _presence(active.path)
    if args.json:
        context.print_json(
            {
                "path": str(active.path),
                "origin": active.origin,
                "location_file": str(location_file(context.environ)),
                "files": present,
            }
        )
        return 0
    console.print(escape(f"weights directory: {active.path} ({active.origin})"))
    for name, found in present.items():
        console.print(f"  {'[green]found[/]  ' if found else '[red]missing[/]'} {escape(name)}")
    return 0


# -- verify -----------------------------------------------------------------------------------
def _verify(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.weights import active_weights_dir, load_manifest, verify_weights

    config = context.load_config()
    manifest = load_manifest(args.manifest)
    directory = (
        args.directory.expanduser() if args.directory else active_weights_dir(config.model, context.environ).path
    )
    statuses = verify_weights(manifest, directory)
    failed = [s for s in statuses if not s.usable]
    load_error = ""
    if args.load and not failed:
        from avatarforcing.plugin.app.model_loading import load_model_from_source, source_from_directory

        try:
            load_model_from_source(source_from_directory(directory, config.model.preset, "weights verify"))
        except CommandError as error:
            load_error = str(error)
    if args.json:
        context.print_json(
            {
                "directory": str(directory),
                "manifest": manifest.source,
                "files": [{"path": s.entry.path, "state": s.state, "detail": s.detail} for s in statuses],
                "load": None if not args.load else (load_error or ("skipped" if failed else "ok")),
            }
        )
    else:
        table = Table(title=escape(f"weights in {directory} (manifest: {manifest.source})"), header_style="bold")
        for column in ("file", "state", "detail"):
            table.add_column(column, overflow="fold")
        for status in statuses:
            style = _STATE_STYLE[status.state]
            table.add_row(escape(status.entry.path), f"[{style}]{status.state}[/]", escape(status.detail))
        context.console.print(table)
        if args.load:
            if failed:
                context.console.print("load: skipped (files missing or wrong)")
            elif load_error:
                context.console.print(f"[red]load failed:[/] {escape(load_error)}")
            else:
                context.console.print("[green]load: ok[/] (strict)")
    return 1 if failed or load_error else 0


def _run(args: argparse.Namespace, context) -> int:
    return {"fetch": _fetch, "path": _path, "verify": _verify}[args.weights_action](args, context)


COMMAND = CommandSpec(
    name="weights",
    help="fetch, locate and verify the official weights (weights fetch|path|verify)",
    configure=_configure,
    run=_run,
)
