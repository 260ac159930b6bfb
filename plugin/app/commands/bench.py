"""``avatarforcing bench [--json [FILE]] [--config NAME] [--blocks N] [--threads N]
[--backend NAME] [--onnx-dir DIR] [--engine-cache DIR] [--precision P] [--engine NAME]``.

Without ``--backend``/``--engine`` it calls `avatarforcing.engine.official.stage_bench.run_benchmark(config_name, blocks, threads)` (plus ``nfe``
from ``[model] nfe`` and ``device`` from ``[model] device`` unless it is ``auto``, when the
function accepts them) and prints a table or, with ``--json``, exactly one JSON object. The
result may be a dict, or an object with ``to_dict()``, or a dataclass. Defaults come from the
configuration: ``--config`` from ``[model] preset``, ``--threads`` from ``[model] threads``
(0 = the engine decides, passed as ``None``).

``--backend eager|cuda-graphs|tensorrt|onnxruntime|auto|all`` times the exported fixed-shape
graphs per backend (`avatarforcing.engine.export.backend_bench`); a backend that cannot run here is
reported as ``not available: reason``, never replaced. ``--engine NAME [--renderer NAME] [--portrait IMG]`` times a registered
motion engine and its renderer through the plugin system (`avatarforcing.plugin.app.engine_bench`).
``--soak SECONDS [--interval S] [--avatar-audio F] [--user-audio F] [--user-video F] [--record F]``
runs a looped live session that long and samples memory, held/dropped frames, latency and the
audio/video offset every interval (`avatarforcing.plugin.app.soak`).
``--json`` alone prints one JSON object; ``--json FILE`` writes it to FILE (and prints the tables).
Exit status 0 when something was measured, 1 when nothing could be.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.commands._output import format_value, key_value_table
from avatarforcing.plugin.app.commands.reference import load_engine_function


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", nargs="?", const="-", default=None, metavar="FILE", help="print one JSON object, or write it to FILE"
    )
    parser.add_argument(
        "--config",
        dest="model_config",
        metavar="NAME",
        default=None,
        help="model configuration to time (default: [model] preset, e.g. official or fixture_small)",
    )
    parser.add_argument("--blocks", metavar="N", default=8, help="blocks to time (default 8)")
    parser.add_argument("--threads", metavar="N", default=None, help="CPU threads (default: [model] threads)")
    parser.add_argument(
        "--backend",
        default=None,
        metavar="NAME",
        help="eager, cuda-graphs, tensorrt, onnxruntime, auto (the one a session picks) or all: "
        "time the exported graphs per backend",
    )
    parser.add_argument(
        "--onnx-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="`avatarforcing graphs export --out DIR` output (onnxruntime and tensorrt need it)",
    )
    parser.add_argument(
        "--engine-cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="TensorRT engine cache (default: the per-user cache)",
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default=None,
        help="tensorrt (default fp16) and cuda-graphs (default fp32) precision",
    )
    parser.add_argument(
        "--renderer",
        default=None,
        metavar="NAME",
        help="with --engine: the renderer to time (default: the session's choice)",
    )
    parser.add_argument(
        "--portrait", default=None, metavar="IMG", help="with --engine: the identity image ([session] portrait)"
    )
    parser.add_argument(
        "--engine",
        dest="engine_name",
        default=None,
        metavar="NAME",
        help="time a registered motion engine and its renderer (e.g. default); with --soak: the session's engine",
    )
    soak = parser.add_argument_group("soak (a long live session sampled every --interval; docs/benchmarks.md)")
    soak.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="run a looped live session this long")
    soak.add_argument("--interval", type=float, default=30.0, metavar="SECONDS", help="sample every (default 30)")
    soak.add_argument("--avatar-audio", metavar="FILE", help="the avatar's voice (looped)")
    soak.add_argument("--user-audio", metavar="FILE", help="the other party's voice (looped)")
    soak.add_argument("--user-video", metavar="FILE", help="the other party's video (looped)")
    soak.add_argument(
        "--record", metavar="FILE.mp4", help="record the session (its A/V offset is read back at the end)"
    )
    soak.add_argument("--overwrite", action="store_true", help="replace an existing --record file")


def _run(args: argparse.Namespace, context) -> int:
    from avatarforcing.plugin.api.options import coerce

    overrides = []
    if args.model_config is not None:
        overrides.append(("model.preset", args.model_config))
    if args.threads is not None:
        overrides.append(("model.threads", args.threads))
    if args.renderer is not None:
        overrides.append(("render.use", args.renderer))
    if args.portrait is not None:
        overrides.append(("session.portrait", args.portrait))
    config = context.load_config(overrides)
    blocks = coerce("--blocks", args.blocks, int, minimum=1, maximum=100000)
    if args.threads is not None:
        coerce("--threads", args.threads, int, minimum=1, maximum=1024)
    threads = config.model.threads or None
    if args.soak is not None:
        return _run_soak(args, context)
    if args.backend is not None and args.engine_name is not None:
        raise CommandError("use --backend or --engine, not both")
    if args.backend is not None:
        return _run_backends(args, context, config, blocks, threads)
    if args.engine_name is not None:
        return _run_engine(args, context, config, blocks)
    run_benchmark = load_engine_function("avatarforcing.engine.official.stage_bench", "run_benchmark", "the benchmark")
    extra = {}
    parameters = inspect.signature(run_benchmark).parameters
    if "nfe" in parameters:
        extra["nfe"] = config.model.nfe
    if "device" in parameters and config.model.device != "auto":
        extra["device"] = config.model.device
    result = as_dict(run_benchmark(config.model.preset, blocks, threads, **extra))
    if _emit_json(args, context, result):
        return 0
    title = f"bench {config.model.preset}, {blocks} blocks, threads {threads or 'auto'}"
    stages = result.get("stages")
    if isinstance(stages, Mapping) and all(isinstance(v, Mapping) for v in stages.values()):
        context.console.print(stage_table(title, stages))
        result = {k: v for k, v in result.items() if k != "stages"}
    context.console.print(key_value_table(title, result))
    return 0


def _emit_json(args: argparse.Namespace, context, result: Any) -> bool:
    """Write `result` as JSON where --json asks; True when that replaces the tables."""
    if args.json is None:
        return False
    if args.json == "-":
        context.print_json(result)
        return True
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    context.console.print(f"wrote {escape(str(args.json))}")
    return False


def _run_backends(args: argparse.Namespace, context, config, blocks: int, threads: int | None) -> int:
    from avatarforcing.engine.export.backend_bench import BACKEND_CHOICES, run_backend_benchmark
    from avatarforcing.plugin.app.paths import user_cache_dir

    if args.backend not in BACKEND_CHOICES:
        raise CommandError(f"--backend must be one of {', '.join(BACKEND_CHOICES)}, got {args.backend!r}")
    cache = args.engine_cache or user_cache_dir() / "avatarforcing" / "engines"
    results = run_backend_benchmark(
        args.backend,
        config.model.preset,
        blocks,
        threads,
        nfe=config.model.nfe,
        onnx_dir=args.onnx_dir,
        engine_cache=cache,
        precision=args.precision,
        log=lambda line: context.console.print(escape(line)),
    )
    payload = {"backends": [as_dict(r) for r in results]}
    if not _emit_json(args, context, payload):
        for result in payload["backends"]:
            _print_result(context, f"bench {result['config']} on {result['backend']}", result)
    return 0 if any(r.available for r in results) else 1


def _run_engine(args: argparse.Namespace, context, config, blocks: int) -> int:
    from avatarforcing.plugin.app.engine_bench import run_engine_benchmark

    result = run_engine_benchmark(context.host, config, args.engine_name, blocks)
    payload = as_dict(result)
    if not _emit_json(args, context, payload):
        _print_result(context, f"bench engine {args.engine_name}", payload)
    return 0 if result.available else 1


def _run_soak(args: argparse.Namespace, context) -> int:
    """A looped live session of `--soak` seconds, sampled every `--interval` (plugin/app/soak.py)."""
    import signal

    from avatarforcing.plugin.app.commands.run import check_inputs_and_outputs, preset_overrides, threading_is_main
    from avatarforcing.plugin.app.session import Session
    from avatarforcing.plugin.app.soak import run_soak

    if args.soak <= 0 or args.interval <= 0:
        raise CommandError("--soak and --interval must be > 0 seconds", exit_code=2)
    if args.backend is not None:
        raise CommandError("use --soak or --backend, not both", exit_code=2)
    session_args = argparse.Namespace(
        preset="demo",
        avatar_audio=args.avatar_audio,
        user_audio=args.user_audio,
        user_video=args.user_video,
        avatar_video=None,
        loop=True,
        sink=[],
        record=args.record,
        portrait=args.portrait,
        engine=args.engine_name,
        stats=None,
        overwrite=args.overwrite,
    )
    overrides = preset_overrides(session_args, {})  # no preview window: a soak runs unattended
    if not args.record:
        overrides.append(("sinks.use", ()))
    overrides += [("session.stats_interval", 0)]
    if args.renderer is not None:
        overrides.append(("render.use", args.renderer))
    config = context.load_config(overrides)
    context.host.lookup("engines", config.model.engine)
    flags = {kind: f"--{kind.replace('_', '-')}" for kind in ("avatar_audio", "user_audio", "user_video")}
    check_inputs_and_outputs(session_args, context, config, {k: f for k, f in flags.items() if getattr(args, k)})
    say = lambda line: context.err_console.print(escape(line))
    session = Session(context.host, config, duration=args.soak, console_log=say)

    def stop(_signum, _frame) -> None:
        session.request_stop()

    previous = {}
    if threading_is_main():
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run_soak(
            session,
            args.soak,
            args.interval,
            on_sample=lambda s: say(
                f"soak {s.t_s:7.0f} s: rss {s.rss_mib:.0f} MiB, load {s.load_1min:.1f}, frames {s.frames}, held {s.held}, "
                f"dropped {s.dropped}, latency p50 {s.latency_p50_ms} ms p95 {s.latency_p95_ms} ms, "
                f"A/V offset {s.av_offset_ms} ms"
            ),
            recording=args.record,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    payload = result.to_dict()
    if not _emit_json(args, context, payload):
        summary = {k: v for k, v in payload.items() if k not in ("intervals", "session")}
        context.console.print(key_value_table(f"soak {args.soak:.0f} s, engine {result.engine}", summary))
    return 1 if result.error else 0


def _print_result(context, title: str, result: Mapping[str, Any]) -> None:
    if not result.get("available", True):
        context.console.print(f"{escape(title)}: {escape(result['reason'])}")
        return
    context.console.print(f"{escape(title)}: {escape(str(result.get('reason', '')))}")
    stages = result.get("stages")
    rest = {k: v for k, v in result.items() if k != "reason"}
    if isinstance(stages, Mapping) and stages and all(isinstance(v, Mapping) for v in stages.values()):
        rows = dict(stages)
        for key in ("total", "target_total"):
            if isinstance(result.get(key), Mapping):
                rows[key] = result[key]
                rest.pop(key)
        context.console.print(stage_table(title, rows))
        rest.pop("stages")
    context.console.print(key_value_table(title, rest))


def as_dict(result: Any) -> dict[str, Any]:
    """A benchmark result as a plain dict."""
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    return dict(result or {})


def stage_table(title: str, stages: Mapping[str, Mapping[str, Any]]) -> Table:
    """One row per stage, one column per measured quantity."""
    columns = list(dict.fromkeys(key for values in stages.values() for key in values))
    table = Table(title=escape(f"{title}: per block"), header_style="bold")
    table.add_column("stage")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for stage, values in stages.items():
        table.add_row(escape(stage), *(escape(format_value(values.get(c, ""))) for c in columns))
    return table


COMMAND = CommandSpec(
    name="bench",
    help="time the engine's stages per block",
    configure=_configure,
    run=_run,
)
