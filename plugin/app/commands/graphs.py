"""``avatarforcing graphs export --out DIR [--check]`` and ``avatarforcing graphs build``.

`export` writes the fixed-shape ONNX graphs (generator first clip and block step with the
caches in and out, decoder, motion encoder, streaming audio window) and, with ``--check``,
runs them in ONNX Runtime against PyTorch and exits 1 beyond tolerance. `build` compiles an
export directory into TensorRT engines for this GPU, cached on disk per GPU/TensorRT/model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from avatarforcing.plugin.api.types import CommandSpec
from avatarforcing.plugin.app.paths import user_cache_dir


def _configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="graphs_action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="export the per-block graphs to ONNX", allow_abbrev=False)
    export.add_argument("--out", type=Path, required=True, metavar="DIR")
    export.add_argument("--check", action="store_true", help="compare every graph with PyTorch in ONNX Runtime")
    export.add_argument(
        "--config",
        dest="model_config",
        default="fixture_small",
        metavar="NAME",
        help="model size with formula weights: fixture_small or official (default fixture_small)",
    )
    export.add_argument("--tolerance", type=float, default=None, help="max abs difference allowed (default per graph)")
    build = actions.add_parser("build", help="build TensorRT engines from an export directory", allow_abbrev=False)
    build.add_argument("onnx_dir", type=Path, metavar="EXPORT_DIR")
    build.add_argument("--cache", type=Path, default=None, metavar="DIR", help="engine cache (default: per-user cache)")
    build.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp16")


def _run(args: argparse.Namespace, context) -> int:
    if args.graphs_action == "export":
        from avatarforcing.engine.export.onnx_runtime import engine_export_main

        return engine_export_main(args.out, args.model_config, args.check, args.tolerance, log=context.console.print)
    from rich.progress import Progress

    from avatarforcing.engine.export.tensorrt_backend import engine_build_main

    cache = args.cache or user_cache_dir() / "avatarforcing" / "engines"
    with Progress(console=context.console, transient=True) as bar:
        task = bar.add_task("building", total=None)

        def progress(phase: str, done: int, total: int) -> None:
            bar.update(task, description=phase, completed=done, total=total)

        return engine_build_main(args.onnx_dir, cache, args.precision, progress=progress, log=context.console.print)


COMMAND = CommandSpec(
    name="graphs", help="export ONNX graphs and build TensorRT engines from them", configure=_configure, run=_run
)
