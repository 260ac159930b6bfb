"""``avatarforcing render``: the avatar's audio (+ the other party's video and voice) -> an mp4.

    avatarforcing render --avatar-audio WAV --out MP4 [--user-video VIDEO] [--user-audio WAV]
                         [--avatar-video VIDEO] [--portrait IMG] [--engine NAME]
                         [--renderer NAME] [--model SPEC] [--nfe N] [--a-cfg X] [--u-cfg X]
                         [--seed N] [--threads N] [--no-face-crop]
    avatarforcing render --engine mirror --avatar-video VIDEO --out MP4 [--portrait IMG]

A render is the same `Session` as ``avatarforcing run``, offline: the files are read as fast as
the engine goes, nothing is paced or dropped, and the ``recorder`` sink writes every frame with
the avatar's audio (H.264 + AAC, 25 fps). Its length is the longer of the two voices (the
official length). Any registered engine renders: ``--engine default`` (the embedded avatar,
nothing to download; the configured ``[model] engine`` otherwise), ``--engine official`` (the
Avatar Forcing weights; ``--model SPEC`` picks them and implies it), ``--engine mirror`` (the
face of ``--avatar-video``, the person the avatar represents, copied onto the avatar), or a
plugin's. The avatar's audio is ``--avatar-audio``, else the audio track of ``--avatar-video``
(one of them must give audio: it sets the render's length with the user's voice).

Flags override the configuration (``--nfe`` -> ``model.nfe``, ``--a-cfg`` ->
``model.a_cfg_scale``, ``--u-cfg`` -> ``model.u_cfg_scale``, ``--seed`` -> ``model.seed``,
``--threads`` -> ``model.threads``, ``--renderer`` -> ``render.use``, ``--portrait`` ->
``session.portrait``, ``--engine`` -> ``model.engine``, ``--model`` ->
``engines.official.model``, ``--no-face-crop`` -> ``engines.official.face_tracking = false``) and
are validated like them. Every file and the output folder are checked before anything loads;
an existing ``--out`` file is refused unless ``--overwrite`` is given.
Exit status: 0 written, 1 failure (unreadable media, no face, weights that do not load), 2
usage (missing file, bad option).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.preflight import check_output, check_portrait
from avatarforcing.schemas.media_rates import FRAME_RATE

# flag attribute -> configuration option it overrides
_OVERRIDES = (
    ("nfe", "model.nfe"),
    ("a_cfg", "model.a_cfg_scale"),
    ("u_cfg", "model.u_cfg_scale"),
    ("seed", "model.seed"),
    ("threads", "model.threads"),
    ("renderer", "render.use"),
    ("portrait", "session.portrait"),
    ("engine", "model.engine"),
    ("model", "engines.official.model"),
)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--avatar-audio", metavar="WAV", type=Path, help="the avatar's voice (default: the --avatar-video's track)"
    )
    parser.add_argument("--out", metavar="MP4", type=Path, required=True, help="output video (H.264 + AAC, 25 fps)")
    parser.add_argument("--user-video", metavar="VIDEO", type=Path, help="the other participant's video")
    parser.add_argument(
        "--user-audio", metavar="WAV", type=Path, help="the other participant's voice (default: the video's track)"
    )
    parser.add_argument(
        "--avatar-video",
        metavar="VIDEO",
        type=Path,
        help="your own face, the person the avatar represents (drives the avatar with --engine mirror)",
    )
    parser.add_argument("--portrait", metavar="IMG", help="identity image (default: [session] portrait)")
    parser.add_argument("--engine", metavar="NAME", help="motion engine (default: [model] engine; see `plugins`)")
    parser.add_argument("--renderer", metavar="NAME", help="renderer plugin (default: the engine's own)")
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="official weights: formula:fixture_small | formula:official | a directory with the official "
        "files or model.safetensors + config.json (implies --engine official)",
    )
    parser.add_argument("--nfe", metavar="N", help="sampler steps (default: [model] nfe)")
    parser.add_argument("--a-cfg", metavar="X", help="avatar-audio guidance (default: [model] a_cfg_scale)")
    parser.add_argument("--u-cfg", metavar="X", help="user guidance (default: [model] u_cfg_scale)")
    parser.add_argument("--seed", metavar="N", help="noise seed (default: [model] seed)")
    parser.add_argument("--threads", metavar="N", help="CPU threads (default: [model] threads, 0 = automatic)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file (refused otherwise)")
    parser.add_argument(
        "--no-face-crop",
        dest="face_crop",
        action="store_false",
        help="official engine: no face tracking of the user video (null user motion)",
    )


def _existing(flag: str, path: Path | None) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    if not path.is_file():
        raise CommandError(f"{flag}: file not found: {path}", exit_code=2)
    return path


def _avatar_audio(avatar_audio: Path | None, avatar_video: Path | None) -> Path:
    """The avatar's audio: `avatar_audio`, else the audio track of `avatar_video`; neither gives
    any: one usage error (exit 2). Raises `MediaError` for a video that cannot be read."""
    from avatarforcing.integrations.media import video_info

    if avatar_audio is not None:
        return avatar_audio
    if avatar_video is not None and video_info(avatar_video).has_audio:
        return avatar_video
    if avatar_video is not None:
        raise CommandError(
            f"no avatar audio: --avatar-video {avatar_video} has no audio track; give --avatar-audio", exit_code=2
        )
    raise CommandError("no avatar audio: give --avatar-audio, or an --avatar-video with an audio track", exit_code=2)


def _media_overrides(args: argparse.Namespace) -> tuple[list[tuple[str, object]], float, float]:
    """Source options for the files (read as fast as the engine goes), the seconds of audio that
    set the render's length and the seconds of avatar audio. Unreadable media: one line naming the
    file (exit 1)."""
    from avatarforcing.integrations.media import MediaError, audio_duration, video_info

    avatar_audio = _existing("--avatar-audio", args.avatar_audio)
    avatar_video = _existing("--avatar-video", args.avatar_video)
    user_video = _existing("--user-video", args.user_video)
    user_audio = _existing("--user-audio", args.user_audio)
    out: list[tuple[str, object]] = []
    try:
        if avatar_video is not None:
            video_info(avatar_video)  # a file without a readable video stream fails here, not mid-render
        avatar_audio = _avatar_audio(avatar_audio, avatar_video)
        seconds = [audio_duration(avatar_audio)]
        if user_video is not None:
            video_info(user_video)  # a file without a readable video stream fails here, not mid-render
            if user_audio is None and video_info(user_video).has_audio:
                user_audio = user_video
        if user_audio is not None:
            seconds.append(audio_duration(user_audio))
    except MediaError as error:
        raise CommandError(str(error)) from None
    for kind, path, name in (
        ("avatar_audio", avatar_audio, "audio-file"),
        ("user_audio", user_audio, "audio-file"),
        ("user_video", user_video, "video-file"),
        ("avatar_video", avatar_video, "video-file"),
    ):
        if path is None:
            out.append((f"sources.{kind}.use", ""))  # silence / no video
            continue
        out += [(f"sources.{kind}.use", name), (f"sources.{kind}.path", str(path)), (f"sources.{kind}.realtime", False)]
    return out, max(seconds), seconds[0]


def _progress(context, total_frames: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = context.err_console
    progress = Progress(
        TextColumn("rendering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("frames"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task("render", total=total_frames)
    return progress, lambda done: progress.update(task, completed=done)


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.integrations.media import video_info
    from avatarforcing.plugin.app.session import Session

    overrides = [(option, getattr(args, name)) for name, option in _OVERRIDES if getattr(args, name) is not None]
    if args.model is not None and args.engine is None:
        overrides.append(("model.engine", "official"))
    if not args.face_crop:
        overrides.append(("engines.official.face_tracking", False))
    out = check_output("--out", args.out, suffix=".mp4", overwrite=args.overwrite)
    media, seconds, avatar_seconds = _media_overrides(args)
    if seconds * FRAME_RATE < 1:
        raise CommandError(
            f"nothing to render: the inputs hold {seconds:.2f} s of audio (less than one frame); "
            "give an --avatar-audio (or --user-audio/--user-video) with sound in it",
            exit_code=2,
        )
    overrides += media
    # written under a temporary name, renamed when complete: a failed render leaves no file
    partial = out.with_name(f".{out.stem}.partial.mp4")
    overrides += [("sinks.use", ("recorder",)), ("sinks.recorder.path", str(partial))]
    config = context.load_config(overrides)
    if config.session.portrait:
        check_portrait("--portrait" if args.portrait else "session.portrait", config.session.portrait)
    context.host.lookup("engines", config.model.engine)  # unknown names fail before any work
    if config.render.chosen:
        context.host.lookup("renderers", config.render.use)
    console = context.err_console
    total = max(1, math.ceil(seconds * FRAME_RATE))
    progress, on_frame = _progress(context, total)
    started = time.perf_counter()
    session = Session(
        context.host, config, offline=True, on_frame=on_frame, console_log=lambda line: console.print(escape(line))
    )
    try:
        with progress:
            stats = session.run()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if stats["error"]:
        partial.unlink(missing_ok=True)
        raise CommandError(f"render failed: {stats['error']}")
    partial.replace(out)
    frames = int(stats.get("frames") or 0)
    wall = time.perf_counter() - started
    if not video_info(out).has_audio:
        sound = "without sound"
    elif avatar_seconds * FRAME_RATE < 1:
        sound = "with a silent sound track (the avatar audio is empty)"
    else:
        sound = "with the avatar audio"
    context.console.print(
        escape(
            f"wrote {out}: {frames} frames ({frames / FRAME_RATE:.2f} s at {FRAME_RATE} fps) {sound}; "
            f"engine {stats.get('engine')}, renderer {stats.get('renderer')}, {wall:.1f} s "
            f"({frames / FRAME_RATE / wall:.2f} video s per compute s)"
        )
    )
    return 0


COMMAND = CommandSpec(
    name="render",
    help="render an mp4: the avatar speaking the given audio and reacting to the other party",
    configure=_configure,
    run=_run,
)
