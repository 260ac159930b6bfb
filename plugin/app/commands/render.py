"""``avatarforcing render``: portrait + avatar audio + user video -> mp4, through the streaming
engine (`avatarforcing.plugin.app.render`).

    avatarforcing render --portrait IMG --avatar-audio WAV --user-video VIDEO [--user-audio WAV]
                         --out MP4 [--model SPEC] [--renderer NAME] [--nfe N] [--a-cfg X]
                         [--u-cfg X] [--seed N] [--threads N] [--no-face-crop]

Flags override the configuration (``--nfe`` -> ``model.nfe``, ``--a-cfg`` ->
``model.a_cfg_scale``, ``--u-cfg`` -> ``model.u_cfg_scale``, ``--seed`` -> ``model.seed``,
``--threads`` -> ``model.threads``, ``--renderer`` -> ``render.use``, ``--portrait`` ->
``session.portrait``) and are validated like them. ``--model``: see
`avatarforcing.plugin.app.model_loading`. Everything that can be checked cheaply (files, renderer
name, model spec, faces) is checked before the model is loaded. Exit status: 0 written,
1 failure (no face, unreadable media, weights that do not load), 2 usage (missing file, bad
option or model spec).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError, ConfigError
from avatarforcing.plugin.api.types import CommandSpec

# flag attribute -> configuration option it overrides
_OVERRIDES = (
    ("nfe", "model.nfe"),
    ("a_cfg", "model.a_cfg_scale"),
    ("u_cfg", "model.u_cfg_scale"),
    ("seed", "model.seed"),
    ("threads", "model.threads"),
    ("renderer", "render.use"),
    ("portrait", "session.portrait"),
)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--portrait", metavar="IMG", help="identity image (default: [session] portrait)")
    parser.add_argument(
        "--avatar-audio", metavar="WAV", type=Path, required=True, help="the avatar's voice (any audio file)"
    )
    parser.add_argument("--user-video", metavar="VIDEO", type=Path, required=True, help="the other participant's video")
    parser.add_argument(
        "--user-audio",
        metavar="WAV",
        type=Path,
        help="the other participant's voice (default: the video's audio track)",
    )
    parser.add_argument("--out", metavar="MP4", type=Path, required=True, help="output video (H.264 + AAC, 25 fps)")
    parser.add_argument(
        "--model",
        metavar="SPEC",
        help="formula:fixture_small | formula:official | a directory with the official files or "
        "model.safetensors + config.json (default: the weights directory, see `weights path`)",
    )
    parser.add_argument(
        "--renderer", metavar="NAME", help="renderer plugin (default: [render] use, motion-autoencoder)"
    )
    parser.add_argument("--nfe", metavar="N", help="sampler steps (default: [model] nfe)")
    parser.add_argument("--a-cfg", metavar="X", help="avatar-audio guidance (default: [model] a_cfg_scale)")
    parser.add_argument("--u-cfg", metavar="X", help="user guidance (default: [model] u_cfg_scale)")
    parser.add_argument("--seed", metavar="N", help="noise seed (default: [model] seed)")
    parser.add_argument("--threads", metavar="N", help="CPU threads (default: [model] threads, 0 = automatic)")
    parser.add_argument(
        "--no-face-crop",
        dest="face_crop",
        action="store_false",
        help="centre-square crops instead of face detection (inputs already face-centred)",
    )


def _progress(context, total_blocks: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = context.err_console
    progress = Progress(
        TextColumn("rendering"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("blocks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    task = progress.add_task("render", total=total_blocks)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.app.model_loading import load_model_from_source, pick_device, resolve_model_source
    from avatarforcing.plugin.app.render import RenderInputs, block_count, prepare_inputs, render_video

    overrides = [(option, getattr(args, name)) for name, option in _OVERRIDES if getattr(args, name) is not None]
    config = context.load_config(overrides)
    if not config.session.portrait:
        raise CommandError("--portrait is required (or set [session] portrait)", exit_code=2)
    inputs = RenderInputs(
        portrait=Path(config.session.portrait).expanduser(),
        avatar_audio=args.avatar_audio.expanduser(),
        user_video=args.user_video.expanduser(),
        user_audio=args.user_audio.expanduser() if args.user_audio else None,
        face_crop=args.face_crop,
    )
    inputs.check_files()
    out = args.out.expanduser()
    if not out.parent.is_dir():
        raise CommandError(f"--out: folder does not exist: {out.parent}", exit_code=2)
    if out.is_dir():
        raise CommandError(f"--out: {out} is a directory", exit_code=2)
    context.host.lookup("renderers", config.render.use)  # unknown renderer: fail before any work
    source = resolve_model_source(args.model, config.model, context.environ)
    size = source.model_config().input_size

    import torch

    from avatarforcing.engine.official.pipeline import PipelineConfig
    from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales

    try:  # the engine's own limits, checked before any heavy work
        FlowMatchingEulerSampler(config.model.nfe)
    except ValueError as error:
        raise ConfigError("model.nfe", str(error)) from None
    if config.model.threads:
        torch.set_num_threads(config.model.threads)
    console = context.err_console
    prepared = prepare_inputs(inputs, size)
    for note in prepared.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    device = pick_device(config.model.device)
    console.print(escape(f"loading {source.description} on {device}"))
    model = load_model_from_source(source, device)
    pipeline_config = PipelineConfig(
        nfe=config.model.nfe,
        guidance=GuidanceScales(config.model.a_cfg_scale, config.model.u_cfg_scale),
        seed=config.model.seed,
    )
    progress, on_block = _progress(context, block_count(prepared.total_frames))
    with progress:
        result = render_video(prepared, out, model, context.host, config, pipeline_config, on_block=on_block)
    context.console.print(
        escape(
            f"wrote {result.output}: {result.frames} frames ({result.duration_s:.2f} s at 25 fps) "
            f"with the avatar audio, {result.blocks} block(s), in {result.wall_s:.1f} s"
        )
    )
    return 0


COMMAND = CommandSpec(
    name="render",
    help="render an mp4 from a portrait, the avatar's audio and the other participant's video",
    configure=_configure,
    run=_run,
)
