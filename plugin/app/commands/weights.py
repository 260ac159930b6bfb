"""``avatarforcing weights fetch|path|verify``: the official weights on this machine.

- ``weights fetch [--from DIR] [--dest DIR] [--manifest FILE] [--accept-license] [--update]
  [--force]`` installs what is missing or wrong: every remote file through ``huggingface_hub``
  (its cache, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, progress bars), verified against
  the Hub's sha256 and recorded in the weights directory's lock
  (`avatarforcing.plugin.app.weights_fetch`). The CC BY-NC 4.0 notice of the official checkpoints
  is shown and must be accepted once (``--accept-license``, or ``y`` at the prompt on a
  terminal). A file that differs from the lock is refused unless ``--update``. Exit 1 when a
  file could not be fetched or was refused.
- ``weights path [DIR] [--reset] [--json]`` shows the weights directory in use (and why), or
  records DIR as the local copy to use.
- ``weights verify [--dir DIR] [--manifest FILE] [--load] [--json]`` checks the files against
  the manifest and the lock (``--load``: also loads them strictly into the model and prints
  each checkpoint's key-prefix variant); exit 1 on any problem.
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
        help="download the official checkpoints and wav2vec2-base-960h from the Hugging Face Hub",
        description="Download the official Avatar Forcing checkpoints (CC BY-NC 4.0, from the Hub mirror "
        "multimodalart/AvatarForcingHelpers) and wav2vec2-base-960h into the weights directory with "
        "huggingface_hub (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE, HF_ENDPOINT apply), verify them against the "
        "Hub's sha256 and record them in the directory's weights.lock.json.",
        allow_abbrev=False,
    )
    fetch.add_argument(
        "--from",
        dest="base",
        metavar="DIR",
        help="copy the files found in DIR (e.g. downloaded by hand from the authors' Google Drive folder); "
        "the others still come from the Hub",
    )
    fetch.add_argument(
        "--dest",
        metavar="DIR",
        type=Path,
        help="where to put the files (default: the weights directory in use, see `weights path`)",
    )
    fetch.add_argument(
        "--manifest",
        metavar="FILE",
        help="JSON manifest replacing the built-in one (paths, Hub repos and revisions, sizes, sha256)",
    )
    fetch.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the CC BY-NC 4.0 licence of the official checkpoints (recorded: asked once per user)",
    )
    fetch.add_argument(
        "--update",
        action="store_true",
        help="accept files that differ from those recorded in the lock (a changed upstream file)",
    )
    fetch.add_argument("--force", action="store_true", help="download and install again even if a file checks out")

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
        help="check the weights against the manifest and the lock",
        description="Check every manifest file in the weights directory (size, sha256 from the manifest or "
        "the lock); with --load, also load them strictly into the model and print the key-prefix variant "
        "each checkpoint uses.",
        allow_abbrev=False,
    )
    verify.add_argument(
        "--dir", dest="directory", metavar="DIR", type=Path, help="directory to check (default: the one in use)"
    )
    verify.add_argument("--manifest", metavar="FILE", help="JSON manifest replacing the built-in one")
    verify.add_argument(
        "--load",
        action="store_true",
        help="also load the checkpoints strictly and print their key-prefix variant (needs memory for the model)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON object")


# -- fetch ------------------------------------------------------------------------------------
def _license_notice(licenses: list[str]) -> str:
    """The notice for the non-commercial `licenses` about to be accepted."""
    from avatarforcing.plugin.app.weights import LICENSE_NOTICE, OFFICIAL_LICENSE

    others = [name for name in licenses if name != OFFICIAL_LICENSE]
    parts = [LICENSE_NOTICE] if OFFICIAL_LICENSE in licenses else []
    if others:
        parts.append(f"Files of this manifest are licensed {', '.join(others)}: non-commercial use only.")
    return "\n".join(parts)


def _confirm_license(args: argparse.Namespace, context, licenses: list[str]) -> None:
    """Accepted before: one reminder line. Else show the notice, then accept it with
    --accept-license or `y` on a terminal (recorded for this user); anything else refuses."""
    from avatarforcing.plugin.app.weights import (
        OFFICIAL_LICENSE,
        accepted_license,
        license_record_file,
        record_license_acceptance,
    )

    env = context.environ
    pending = [name for name in licenses if accepted_license(name, env) is None]
    if not pending:
        dates = ", ".join(f"{name} on {accepted_license(name, env)}" for name in licenses)
        context.err_console.print(escape(f"Licence accepted ({dates}): non-commercial use only."))
        return
    context.err_console.print(escape(_license_notice(pending)))
    accepted = args.accept_license
    if not accepted and sys.stdin is not None and sys.stdin.isatty() and context.stderr.isatty():
        context.stderr.write("Accept this licence and download? [y/N] ")
        context.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError("licence not accepted; nothing was downloaded", exit_code=1)
        accepted = True
    if not accepted:
        subject = "the official checkpoints are" if pending == [OFFICIAL_LICENSE] else "files to install are"
        raise CommandError(
            f"{subject} licensed {', '.join(pending)} (non-commercial use only): accept the licence with "
            "`avatarforcing weights fetch --accept-license` (asked once per user), or answer y at the prompt "
            "on a terminal; nothing was downloaded",
            exit_code=2,
        )
    for name in pending:
        record_license_acceptance(name, env)
    how = "--accept-license" if args.accept_license else "at the prompt"
    context.err_console.print(escape(f"Licence accepted ({how}); recorded in {license_record_file(env)}."))


def _fetch(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.weights import active_weights_dir, load_manifest
    from avatarforcing.plugin.app.weights_fetch import HubSettings, fetch_weights, plan_fetch

    config = context.load_config()
    manifest = load_manifest(args.manifest)
    active = active_weights_dir(config.model, context.environ)
    destination = (args.dest.expanduser() if args.dest else active.path).resolve()
    if destination.exists() and not destination.is_dir():
        raise CommandError(f"--dest: {destination} is not a directory", exit_code=2)
    hub = HubSettings.from_environ(context.environ)
    plan = plan_fetch(manifest, destination, hub, base=args.base, force=args.force, update=args.update)
    if plan.changes and not args.update:
        raise CommandError(plan.refusal())
    if plan.needs_license:
        _confirm_license(args, context, plan.licenses)
    console = context.console
    pending = plan.with_action("hub") + plan.with_action("local")
    if pending:
        where = "the Hugging Face cache (HF_HUB_OFFLINE)" if hub.offline else hub.where
        console.print(
            escape(f"fetching {len(pending)} file(s) into {destination} (from {where}; cache {hub.cache_dir})")
        )
    results = fetch_weights(plan)
    table = Table(title=escape(f"weights in {destination}"), header_style="bold")
    for column in ("file", "action", "source", "check"):
        table.add_column(column, overflow="fold")
    for result in results:
        style = _STATE_STYLE[result.status.state]
        table.add_row(
            escape(result.entry.path),
            result.action,
            escape(result.source),
            f"[{style}]{escape(result.status.detail)}[/]",
        )
    console.print(table)
    for result in results:
        if result.status.state == "unverified":
            console.print(f"[yellow]warning:[/] {escape(result.entry.path)}: {escape(result.status.detail)}")
    unavailable = [r for r in results if r.action == "unavailable"]
    for result in unavailable:
        console.print(
            f"[red]not fetched:[/] {escape(result.entry.path)} has no download source; get it "
            f"from {escape(result.entry.origin)}, then run `avatarforcing weights fetch --from DIR` "
            "with DIR holding it (or `avatarforcing weights path DIR`)"
        )
    if any(r.action != "present" for r in results if r.action != "unavailable"):
        console.print(escape(f"recorded in {plan.lock.path}"))
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


# -- verify ----------------------------------------------------------------------------------
def _verify(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.weights import active_weights_dir, load_manifest, verify_weights

    config = context.load_config()
    manifest = load_manifest(args.manifest)
    directory = (
        args.directory.expanduser() if args.directory else active_weights_dir(config.model, context.environ).path
    )
    statuses = verify_weights(manifest, directory)
    failed = [s for s in statuses if not s.usable]
    check = None
    if args.load and not failed:
        from avatarforcing.plugin.app.weights_keys import check_official_load

        check = check_official_load(directory, config.model.preset)
    if args.json:
        load = None if not args.load else ("skipped" if check is None else (check.error or "ok"))
        context.print_json(
            {
                "directory": str(directory),
                "manifest": manifest.source,
                "files": [{"path": s.entry.path, "state": s.state, "detail": s.detail} for s in statuses],
                "load": load,
                "key_layouts": None if check is None else [layout.to_dict() for layout in check.layouts],
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
            _print_load(context, check)
    return 1 if failed or (check is not None and not check.ok) else 0


def _print_load(context, check) -> None:
    """The ``--load`` part of ``weights verify``: outcome, then each file's key layout."""
    console = context.console
    if check is None:
        console.print("load: skipped (files missing or wrong)")
        return
    if check.ok:
        console.print("[green]load: ok[/] (strict)")
    else:
        console.print(f"[red]load failed:[/] {escape(check.error)}")
    if check.layouts:
        console.print("key-prefix variant found:")
        for layout in check.layouts:
            for line in layout.lines():
                console.print("  " + escape(line))


def _run(args: argparse.Namespace, context) -> int:
    return {"fetch": _fetch, "path": _path, "verify": _verify}[args.weights_action](args, context)


COMMAND = CommandSpec(
    name="weights",
    help="fetch, locate and verify the official weights (weights fetch|path|verify)",
    configure=_configure,
    run=_run,
)
