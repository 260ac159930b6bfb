"""``avatarforcing run``: the live session (see docs/session.md).

Presets choose sources and sinks; explicit flags and ``--set`` win over them:

- ``meeting``: microphone + loopback + screen -> ``virtual-camera`` (Zoom, Meet, Teams);
- ``stream``: the same sources -> ``overlay`` + ``obs`` (the avatar in OBS's current scene,
  bottom-right, with alpha: a browser source showing the overlay page where OBS has one, else a
  media source reading RGBA), the renderer's background transparent when it has that option;
- ``demo``: file sources (``--avatar-audio``/``--user-audio``/``--user-video``, silence where
  none is given) -> ``preview`` when a display exists, else ``recorder``.

File flags select the built-in ``audio-file``/``video-file`` sources paced to the wall clock.
``--avatar-video FILE`` is your own face from a file (``[sources.avatar_video]``), which the
``mirror`` engine copies onto the avatar (``--engine mirror``; live, ``--set
sources.avatar_video.use=webcam`` takes the camera instead).

Before any model loads, every input and output is checked (`check_inputs_and_outputs`): a file
that cannot be read, a portrait that is not an image, a recording that is not an .mp4 or whose
folder cannot hold it, or an existing ``--record``/``--stats`` file without ``--overwrite`` is one
line and exit 2. Exit status: 0 the inputs ended / ``--duration`` passed, 1 the session failed
(a stage, a file source, the last output), 2 usage, 128 + N stopped by signal N.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from avatarforcing.plugin.api.types import SOURCE_KINDS, VIDEO_SOURCE_KINDS, CommandSpec

PRESETS = ("meeting", "stream", "demo")
LIVE_SOURCES = {"avatar_audio": "microphone", "user_audio": "loopback", "user_video": "screen"}
PRESET_SINKS = {"meeting": ("virtual-camera",), "stream": ("overlay", "obs")}
# renderer options a preset sets when the chosen renderer declares them (and --set does not)
PRESET_RENDER = {"stream": {"background": "transparent"}}


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=PRESETS, help="meeting (virtual camera), stream (OBS), demo (files)")
    parser.add_argument(
        "--avatar-audio", metavar="FILE", help="the avatar's voice from a file (instead of the microphone)"
    )
    parser.add_argument("--user-audio", metavar="FILE", help="the other party's voice from a file")
    parser.add_argument("--user-video", metavar="FILE", help="the other party's video from a file")
    parser.add_argument(
        "--avatar-video", metavar="FILE", help="your own face from a file (drives the avatar with --engine mirror)"
    )
    parser.add_argument("--loop", action="store_true", help="loop the file sources")
    parser.add_argument("--portrait", metavar="IMG", help="identity image ([session] portrait)")
    parser.add_argument("--engine", metavar="NAME", help="motion engine ([model] engine)")
    parser.add_argument("--sink", metavar="NAME", action="append", default=[], help="an output (repeatable)")
    parser.add_argument("--record", metavar="FILE.mp4", help="also record the output (the recorder sink)")
    parser.add_argument(
        "--duration",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="stop after this long (0 = until Ctrl-C or the end of the inputs)",
    )
    parser.add_argument("--stats", metavar="FILE", help="write the session stats as JSON (periodically and at the end)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --record or --stats file (refused otherwise)"
    )


def _has_display(environ) -> bool:
    return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def preset_overrides(args: argparse.Namespace, environ) -> list[tuple[str, object]]:
    """Config overrides from the preset and the flags, in the order they apply."""
    from avatarforcing.plugin.api.errors import CommandError

    out: list[tuple[str, object]] = []
    preset = args.preset
    files = {
        "avatar_audio": args.avatar_audio,
        "user_audio": args.user_audio,
        "user_video": args.user_video,
        "avatar_video": args.avatar_video,
    }
    if preset in ("meeting", "stream"):
        out += [(f"sources.{kind}.use", name) for kind, name in LIVE_SOURCES.items()]
    elif preset == "demo":
        out += [
            ("sources.avatar_audio.use", "silence"),
            ("sources.user_audio.use", "silence"),
            ("sources.user_video.use", ""),
        ]
    for kind, path in files.items():
        if path is None:
            continue
        if not Path(path).expanduser().is_file():
            raise CommandError(f"--{kind.replace('_', '-')}: file not found: {path}", exit_code=2)
        name = "video-file" if kind in VIDEO_SOURCE_KINDS else "audio-file"
        out += [
            (f"sources.{kind}.use", name),
            (f"sources.{kind}.path", str(Path(path).expanduser())),
            (f"sources.{kind}.realtime", True),
            (f"sources.{kind}.loop", bool(args.loop)),
        ]
    sinks: list[str] = []
    if preset in PRESET_SINKS:
        sinks += PRESET_SINKS[preset]
    elif preset == "demo" and not args.sink and not args.record:
        sinks.append("preview" if _has_display(environ) else "recorder")
    sinks += [s for s in args.sink if s not in sinks]
    if args.record:
        if "recorder" not in sinks:
            sinks.append("recorder")
        out.append(("sinks.recorder.path", str(Path(args.record).expanduser())))
    if sinks:
        out.append(("sinks.use", tuple(sinks)))
    if args.portrait:
        out.append(("session.portrait", args.portrait))
    if args.engine:
        out.append(("model.engine", args.engine))
    return out


def preset_render_overrides(preset: str | None, context, config, given: set[str]) -> list[tuple[str, object]]:
    """``render.*`` overrides of `preset` (`PRESET_RENDER`) for the renderer the session will
    choose, limited to the options that renderer declares (``motion-autoencoder`` has no
    background) and that ``--set`` leaves alone."""
    from avatarforcing.plugin.app.session.runner import choose_renderer

    wanted = PRESET_RENDER.get(preset or "", {})
    if not wanted:
        return []
    engine = context.host.lookup("engines", config.model.engine).spec
    registered = {entry.spec.name for entry in context.host.provided("renderers")}
    renderer = context.host.lookup("renderers", choose_renderer(config, engine, registered).name).spec
    declared = {option.name for option in renderer.options}
    return [
        (f"render.{name}", value)
        for name, value in wanted.items()
        if name in declared and f"render.{name}" not in given
    ]


def given_kinds(given: set[str]) -> set[str]:
    """The source kinds whose file `--set` chose (``sources.KIND.path`` among `given`)."""
    return {key.split(".")[1] for key in given if key.startswith("sources.") and key.endswith(".path")}


def check_inputs_and_outputs(args: argparse.Namespace, context, config, flags: dict[str, str]) -> None:
    """Before any model loads: every source's options (a file source's file exists, opens and
    has the stream its kind needs), every sink's options, the portrait (an image), and the
    files the session writes (the recording: an .mp4; the stats: any name), each in a writable
    folder and not replacing a file unless --overwrite. One line and exit 2 for the first
    problem; `flags` maps a source kind to the flag that gave its file (named in messages)."""
    from avatarforcing.plugin.app.preflight import check_output, check_portrait, check_sinks, check_sources

    check_sources(context.host, config, flags)
    if config.session.portrait:
        check_portrait("--portrait" if args.portrait else "session.portrait", config.session.portrait)
    record = config.sinks.options_for("recorder").get("path", "") if "recorder" in config.sinks.use else ""
    if record:
        flag = "--record" if args.record else "sinks.recorder.path"
        check_output(flag, str(record), suffix=".mp4", overwrite=args.overwrite)
    if args.stats:
        check_output("--stats", args.stats, overwrite=args.overwrite)
    check_sinks(context.host, config)


def _run(args: argparse.Namespace, context) -> int:
    from rich.markup import escape

    from avatarforcing.plugin.api.errors import CommandError
    from avatarforcing.plugin.app.session import Session

    if args.duration < 0:
        raise CommandError("--duration must be >= 0", exit_code=2)
    from avatarforcing.plugin.app.config import parse_override

    given = {parse_override(o)[0] if isinstance(o, str) else o[0] for o in context.overrides}
    # --set wins over what a preset chooses; explicit flags win over both
    overrides = [
        (key, value)
        for key, value in preset_overrides(args, context.environ)
        if key not in given or not key.startswith(("sources.", "sinks.use"))
    ]
    config = context.load_config(overrides)
    context.host.lookup("engines", config.model.engine)  # an unknown name fails before any work
    render_overrides = preset_render_overrides(args.preset, context, config, given)
    if render_overrides:
        config = context.load_config([*overrides, *render_overrides])
    chosen_by_set = given_kinds(given)
    flags = {
        kind: f"--{kind.replace('_', '-')}"
        for kind in SOURCE_KINDS
        if getattr(args, kind) and kind not in chosen_by_set
    }
    check_inputs_and_outputs(args, context, config, flags)
    console = context.err_console
    session = Session(
        context.host,
        config,
        duration=args.duration,
        stats_path=args.stats,
        console_log=lambda line: console.print(escape(line)),
    )
    previous = {}
    received: list[int] = []

    def stop(signum, _frame) -> None:
        received.append(signum)
        session.request_stop()

    if threading_is_main():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, stop)
    try:
        stats = session.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stats["error"] and not received:
        console.print(f"[red]session failed:[/] {escape(stats['error'])}")
        return 1
    fps = stats["fps"] or 0.0
    context.console.print(
        escape(
            f"session ended: {stats['frames']} frames in {stats['live_s']:.1f} s ({fps:.2f} fps), "
            f"{stats['held']} held, {stats['dropped']} dropped, {stats['blocks']} blocks"
            + (f"; stats in {args.stats}" if args.stats else "")
        )
    )
    # stopped by a signal: the status shells expect (130 for Ctrl-C, 143 for SIGTERM)
    return 128 + received[0] if received else 0


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


COMMAND = CommandSpec(
    name="run",
    help="run the live avatar: inputs -> engine -> virtual camera / OBS / preview / recorder",
    configure=_configure,
    run=_run,
)
