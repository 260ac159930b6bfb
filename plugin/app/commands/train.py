"""``avatarforcing train --data DIR --out DIR [--model-config JSON|preset] [--stage 1|2]
[--reference CKPT] [--steps N] [--batch N] [--lr X] [--window FRAMES] [--dpo-weight 0.1]
[--dpo-beta 1000] [--seed N] [--resume] [--device auto]``.

Stage 1: flow matching with diffusion forcing; stage 2: + Diffusion-DPO against the stage-1
checkpoint given as --reference. Writes OUT/checkpoint (flow-transformer checkpoint),
OUT/curves.jsonl (+ curves.png), OUT/result.json. See docs/training.md. Exit status 0 trained,
2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.markup import escape

from avatarforcing.plugin.api.errors import CommandError
from avatarforcing.plugin.api.types import CommandSpec

PRESETS = ("official", "small", "tiny")


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", type=Path, required=True, help="dataset directory (manifest.json)")
    parser.add_argument("--out", metavar="DIR", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--model-config",
        metavar="JSON|PRESET",
        default=None,
        help=f"model shape: a preset ({', '.join(PRESETS)}; widths from the dataset), a JSON object or a JSON file "
        "(default: the --reference checkpoint's, else 'tiny' on CPU and 'official' on GPU)",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2), default=1, help="1 flow matching, 2 preference optimisation"
    )
    parser.add_argument(
        "--reference", metavar="CKPT", type=Path, help="stage-1 checkpoint folder (required for stage 2)"
    )
    parser.add_argument("--init", metavar="CKPT", type=Path, help="start stage 1 from this checkpoint (fine-tuning)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--window", metavar="FRAMES", type=int, help="training window (first clip + whole blocks; default K + 2M)"
    )
    parser.add_argument(
        "--clean-block-prob",
        metavar="P",
        type=float,
        default=0.25,
        help="probability that a streaming block is clean history (sigma 0) in a training window (default 0.25)",
    )
    parser.add_argument(
        "--clean-first-clip",
        action="store_true",
        help="let the first clip be clean history too (the window's last block always carries noise)",
    )
    parser.add_argument("--dpo-weight", type=float, default=0.1, help="lambda of the DPO term (default 0.1)")
    parser.add_argument("--dpo-beta", type=float, default=1000.0, help="beta of Diffusion-DPO (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/resume")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--checkpoint-every", type=int, default=200)


def model_config_from_argument(value: str | None, dim_a: int, dim_w: int, gpu: bool):
    """ModelConfig from a preset name, JSON text or JSON file; presets take widths from the data."""
    from avatarforcing.engine.config import ModelConfig

    value = value or ("official" if gpu else "tiny")
    if value == "official":
        return ModelConfig.official()
    presets = {
        "small": dict(dim_h=256, num_heads=4, transformer_depth=4, sec=2, num_frames_per_block=10),
        "tiny": dict(dim_h=64, num_heads=4, transformer_depth=2, sec=1, num_frames_per_block=5),
    }
    if value in presets:
        return ModelConfig(dim_a=dim_a, dim_w=dim_w, **presets[value])
    text = Path(value).read_text() if Path(value).is_file() else value
    try:
        mapping = json.loads(text)
    except ValueError:
        raise CommandError(
            f"--model-config: {value!r} is neither a preset ({', '.join(PRESETS)}), a JSON object nor a JSON file",
            exit_code=2,
        ) from None
    return ModelConfig.from_dict({"dim_a": dim_a, "dim_w": dim_w, **mapping})


def _run(args: argparse.Namespace, context) -> int:
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from avatarforcing.engine.checkpoint_format import read_flow_config
    from avatarforcing.engine.training.dataset import DatasetError, read_manifest
    from avatarforcing.engine.training.trainer import TrainConfig, Trainer, resolve_device

    try:
        manifest = read_manifest(args.data)
        device = resolve_device(args.device)
        start = args.reference if args.stage == 2 else args.init
        if args.model_config is None and start is not None:
            model_cfg, _ = read_flow_config(start)
        else:
            model_cfg = model_config_from_argument(
                args.model_config, manifest["dim_a"], manifest["dim_w"], device.type == "cuda"
            )
        config = TrainConfig(
            data=args.data,
            out=args.out,
            model=model_cfg,
            stage=args.stage,
            reference=args.reference,
            init=args.init,
            steps=args.steps,
            batch=args.batch,
            lr=args.lr,
            window=args.window,
            clean_block_prob=args.clean_block_prob,
            clean_first_clip=args.clean_first_clip,
            dpo_weight=args.dpo_weight,
            dpo_beta=args.dpo_beta,
            seed=args.seed,
            device=str(device),
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
        )
        trainer = Trainer(config)
    except (DatasetError, ValueError, OSError) as error:
        raise CommandError(str(error), exit_code=2) from None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    console = context.err_console
    console.print(
        escape(
            f"stage {args.stage} on {device}: {sum(p.numel() for p in trainer.model.parameters())} parameters, "
            f"window {trainer.layout.frames} frames, {len(trainer.train_set)} train items"
        )
    )
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("training", total=args.steps, completed=0)

        def on_log(step: int, metrics: dict) -> None:
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "lr")
            progress.update(task, completed=step, description=escape(shown))

        try:
            result = trainer.run(on_log)
        except ValueError as error:
            raise CommandError(str(error), exit_code=2) from None
    context.console.print(
        escape(
            f"loss {result.first_loss:.4f} -> {result.final_loss:.4f} in {result.steps} steps; checkpoint {result.checkpoint}"
        )
    )
    if result.margin_after is not None:
        context.console.print(
            escape(f"held-out likelihood margin {result.margin_before:.5f} -> {result.margin_after:.5f}")
        )
    return 0


COMMAND = CommandSpec(
    name="train",
    help="train or fine-tune the flow transformer (stage 1 flow matching, stage 2 preference optimisation)",
    configure=_configure,
    run=_run,
)
