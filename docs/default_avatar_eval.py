"""Measurements of docs/default_avatar.md: the default engine's cost and the smile-mirroring PCC.

Usage:
  python docs/default_avatar_eval.py bench [--weights DIR] [--nfe 5] [--threads 1] [--shared PATH]
  python docs/default_avatar_eval.py smile --data DPO_DATASET CHECKPOINT...

`bench` streams 10 s of the sample conversation (avatar.wav + user.mp4, one tick per frame)
through `DefaultEngine` (face tracking on) and the `puppet` renderer (512 x 512) and prints the
median cost per frame / per 4-frame block and the real-time factor. `smile` samples every
held-out item with and without the user's conditions (as `avatarforcing eval` does) and prints
the mean PCC of the user's and the avatar's smile, generated and ground truth.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def bench(args: argparse.Namespace) -> None:
    import soundfile as sf

    from avatarforcing.integrations.media import iter_video_frames
    from avatarforcing.plugin.api.types import InputTick, SessionInfo
    from avatarforcing.plugin.app.config import config_from_dict
    from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine
    from avatarforcing.plugin.builtins.renderers.puppet import PuppetRenderer

    torch.set_num_threads(args.threads)
    samples = Path(args.shared) / "reference" / "samples"
    audio, _ = sf.read(str(samples / "avatar.wav"), dtype="float32")
    audio = audio[: 10 * 16000]
    frames = [image for _, (_, _, image) in zip(range(250), iter_video_frames(samples / "user.mp4"))]
    session = SessionInfo("bench", config_from_dict({"model": {"threads": args.threads}}), frame_size=(512, 512))
    engine = DefaultEngine(nfe=args.nfe, weights=args.weights)
    engine.open(session)
    engine.warm_up()
    renderer = PuppetRenderer("classic", 512, "green")
    renderer.open(session)
    extract, generate, render = [], [], []
    for f in range(len(audio) // 640):
        tick = InputTick(f, 1, audio[f * 640 : (f + 1) * 640], np.zeros(640, np.float32), [frames[f % len(frames)]])
        start = time.perf_counter()
        features = engine.extract(tick)
        extract.append(time.perf_counter() - start)
        start = time.perf_counter()
        blocks = engine.generate(features)
        spent = time.perf_counter() - start
        for block in blocks:
            start = time.perf_counter()
            renderer.render(block)
            if block.index > 0:  # streaming blocks only (the first clip is warm-up time)
                generate.append(spent)
                render.append(time.perf_counter() - start)
    engine.close()
    renderer.close()
    ms = lambda values: 1000.0 * float(np.median(values))
    block = ms(generate) + ms(render)
    print(
        f"nfe {args.nfe}, {args.threads} thread(s): extract {ms(extract):.1f} ms/frame, generate {ms(generate):.1f} ms/block "
        f"(p90 {1000 * np.percentile(generate, 90):.1f}), puppet render {ms(render):.1f} ms/block; "
        f"generate + render + extract {block + 4 * ms(extract):.1f} ms per 160 ms block: real-time factor "
        f"{160 / (block + 4 * ms(extract)):.2f} video s per compute s (feature extraction counted)"
    )


def smile(args: argparse.Namespace) -> None:
    from avatarforcing.engine.checkpoint_format import load_flow_transformer
    from avatarforcing.engine.sampler import GuidanceScales
    from avatarforcing.engine.training.dataset import ConversationDataset
    from avatarforcing.engine.training.losers import make_loser, sample_motion
    from avatarforcing.engine.training.metrics import pearson

    torch.set_num_threads(1)
    dataset = ConversationDataset(args.data, "heldout")
    for checkpoint in args.checkpoints:
        model, _ = load_flow_transformer(checkpoint)
        for label, sample in (("with user", sample_motion), ("user dropped", make_loser)):
            generated, truth = [], []
            for i in range(len(dataset)):
                item = dataset[i]
                motion = sample(
                    model,
                    item["avatar_audio"],
                    item["user_audio"],
                    item["user_motion"],
                    item["reference"],
                    5,
                    GuidanceScales(2.0, 1.0),
                    i,
                ).numpy()
                user = item["user_motion"].numpy()
                generated.append(pearson(user[:, 6], motion[:, 6]))
                truth.append(pearson(user[:, 6], item["avatar_motion"].numpy()[:, 6]))
            print(
                f"{checkpoint} {label}: smile PCC(user, avatar) generated {np.mean(generated):.3f}, ground truth {np.mean(truth):.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--weights", default="", help="weights folder (default: the packaged ones)")
    b.add_argument("--nfe", type=int, default=5)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    s = sub.add_parser("smile")
    s.add_argument("--data", required=True)
    s.add_argument("checkpoints", nargs="+")
    args = parser.parse_args()
    (bench if args.what == "bench" else smile)(args)


if __name__ == "__main__":
    main()
