"""Measurements of docs/default_avatar.md: the default engine's cost and the smile-mirroring PCC.

Usage:
  python docs/default_avatar_eval.py bench [--weights DIR] [--nfe 5] [--threads 1] [--backend auto] [--shared PATH]
  python docs/default_avatar_eval.py smile --data DPO_DATASET CHECKPOINT...
  python docs/default_avatar_eval.py smoothing --data DATASET [--seeds 0 1000 2000] [--checkpoint DIR]
  python docs/default_avatar_eval.py real [--shared PATH] [--seeds 20 21 22] [--out DIR] [--weights DIR]
  python docs/default_avatar_eval.py lipsync [--weights DIR] [--shared PATH] [--seeds 20 21 ... 29]
  python docs/default_avatar_eval.py nods --data DATASET [--seed 0] [--drop-user] [--listen A U] [--smoothed] [--plot PNG] CHECKPOINT|packaged...
  python docs/default_avatar_eval.py history --data DATASET [--offsets 4 8 12 16] CHECKPOINT...
  python docs/default_avatar_eval.py curves --out PNG [--shipped RUN] RUN...
  python docs/default_avatar_eval.py sheet --out IMAGE [--first 100] [--every 12] [--count 10] VIDEO...

`bench` streams 10 s of the sample conversation (avatar.wav + user.mp4, one tick per frame)
through `DefaultEngine` (face tracking on; its generator on `--backend`, as `[model] backend`)
and the `puppet` renderer (512 x 512) and prints the backend, the median cost per frame / per
4-frame block and the real-time factor. `smile` samples every
held-out item with and without the user's conditions (as `avatarforcing eval` does) and prints
the mean PCC of the user's and the avatar's smile, generated and ground truth. `smoothing`
samples the packaged model on every held-out item with and without the user's conditions, once
per seed (item i gets seed + i, as `avatarforcing eval --seed` does), and prints each metric raw
and through the engine's `MotionSmoother` as mean +- standard deviation over the seeds, with the
lag the smoothing adds (frames, from the cross-correlation of raw and smoothed motion). `real`
renders the avatar on the real samples (`avatarforcing render --portrait rumi.jpg --avatar-audio
avatar.wav --user-video user.mp4`, the default engine and the portrait renderer) per seed, with
and without the engine's smoothing, tracks the rendered face and the person in user.mp4 with the
same `FaceParamsExtractor` (its own filter off) and prints the jitter per group of each, and
PCC(jaw_open, log energy of avatar.wav) of the rendered face. `lipsync` streams all of
`avatar.wav` (the user silent, no face) through `DefaultEngine` per seed, with and without its
smoothing, and prints PCC(jaw_open, log energy) at the engine's output, mean +- standard
deviation over the seeds. `nods` samples each checkpoint on every held-out item (raw, nfe 5;
with `--drop-user` the user's conditions null, the control; with `--listen A U` the guidance
switches to (A, U) while the avatar listens, as in a session) and prints the mean head-pitch
trajectory after the user's listener pauses (relative to the 5 frames before; its peak, when,
and its RMS over the 1.08-s window), the same RMS at as many random moments with the avatar
silent (chance, mean of 20 draws), and `nod_response`; and the ground truth's.
`history` asks whether a checkpoint continues the head motion of a clean history (what the
stream's cache holds): the R^2 of its conditional mean of the next block's head pitch after
the user's pauses and at random silent moments (see the function). `curves` plots the
flow-matching loss of each training run (a folder holding the recipe's `stage1`, `stage1b` and
`stage2` outputs), stage by stage, averaged over 50 steps. `sheet` writes a contact sheet: one row per video (e.g.
the `real` renders of two weights at the same seed), the face region of every `--every`-th frame.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def _sampled(sample, model, item: dict, seed: int) -> np.ndarray:
    """`sample` (`sample_motion` or `make_loser`) of one dataset item as the evaluation samples
    it: nfe 5, guidance (2.0, 1.0), noise seed `seed` -> motion ``[T, dim_w]``."""
    from avatarforcing.engine.sampler import GuidanceScales

    conditions = (item["avatar_audio"], item["user_audio"], item["user_motion"], item["reference"])
    return sample(model, *conditions, 5, GuidanceScales(2.0, 1.0), seed).numpy()


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
    config = config_from_dict({"model": {"threads": args.threads, "backend": args.backend}})
    session = SessionInfo("bench", config, frame_size=(512, 512))
    engine = DefaultEngine(nfe=args.nfe, weights=args.weights)
    engine.open(session)
    backend = engine.backend
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
        f"{backend}, nfe {args.nfe}, {args.threads} thread(s): extract {ms(extract):.1f} ms/frame, generate {ms(generate):.1f} ms/block "
        f"(p90 {1000 * np.percentile(generate, 90):.1f}), puppet render {ms(render):.1f} ms/block; "
        f"generate + render + extract {block + 4 * ms(extract):.1f} ms per 160 ms block: real-time factor "
        f"{160 / (block + 4 * ms(extract)):.2f} video s per compute s (feature extraction counted)"
    )


def smile(args: argparse.Namespace) -> None:
    from avatarforcing.engine.checkpoint_format import load_flow_transformer
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
                motion = _sampled(sample, model, item, i)
                user = item["user_motion"].numpy()
                generated.append(pearson(user[:, 6], motion[:, 6]))
                truth.append(pearson(user[:, 6], item["avatar_motion"].numpy()[:, 6]))
            print(
                f"{checkpoint} {label}: smile PCC(user, avatar) generated {np.mean(generated):.3f}, ground truth {np.mean(truth):.3f}"
            )


def _lag_frames(raw: np.ndarray, smoothed: np.ndarray, dims: tuple[int, ...]) -> float:
    """Mean over `dims` of the shift (frames, parabolic sub-frame peak) that best aligns the
    smoothed motion to the raw one."""
    lags = []
    for d in dims:
        a, b = raw[:, d] - raw[:, d].mean(), smoothed[:, d] - smoothed[:, d].mean()
        c = np.array([np.dot(a[: len(a) - k], b[k:]) / (len(a) - k) for k in range(15)])
        k = int(np.argmax(c))
        offset = 0.0
        if 0 < k < len(c) - 1 and (den := c[k - 1] - 2 * c[k] + c[k + 1]) != 0:
            offset = 0.5 * (c[k - 1] - c[k + 1]) / den
        lags.append(k + offset)
    return float(np.mean(lags))


def smoothing(args: argparse.Namespace) -> None:
    from avatarforcing.engine.embedded.audio_features import voiced_frames
    from avatarforcing.engine.embedded.smoothing import MotionSmoother
    from avatarforcing.engine.training.dataset import ConversationDataset
    from avatarforcing.engine.training.losers import make_loser, sample_motion
    from avatarforcing.engine.training.metrics import ConversationMotion, evaluate, groups_for_space

    torch.set_num_threads(1)
    model = _load_model(args.checkpoint)
    dataset = ConversationDataset(args.data, "heldout")
    groups = groups_for_space(dataset.header.space, dataset.header.dim_w)
    items = [dataset[i] for i in range(len(dataset))]
    rows: dict[str, list[float]] = {}
    for condition, sample in (("with user", sample_motion), ("user dropped", make_loser)):
        for seed in args.seeds:
            raw, smoothed, lag_pose, lag_expression = [], [], [], []
            for i, item in enumerate(items):
                motion = _sampled(sample, model, item, seed + i)
                shown = MotionSmoother()(motion, 0)
                lag_pose.append(_lag_frames(motion, shown, groups.pose))
                lag_expression.append(_lag_frames(motion, shown, groups.expression))
                truth, user = item["avatar_motion"].numpy(), item["user_motion"].numpy()
                energy = item["avatar_energy"].numpy()
                voicing = (voiced_frames(item["user_audio"].numpy()), voiced_frames(item["avatar_audio"].numpy()))
                raw.append(ConversationMotion(motion, truth, user, energy, *voicing))
                smoothed.append(ConversationMotion(shown, truth, user, energy, *voicing))
            for label, conversations in (("raw", raw), ("smoothed", smoothed)):
                for metric, values in evaluate(conversations, groups).items():
                    rows.setdefault(f"{metric} | {condition} | {label}", []).append(values["generated"])
                    if "ground_truth" in values:
                        rows.setdefault(f"{metric} | ground truth", []).append(values["ground_truth"])
            rows.setdefault(f"lag_pose_frames | {condition} | smoothed", []).append(float(np.mean(lag_pose)))
            rows.setdefault(f"lag_expression_frames | {condition} | smoothed", []).append(
                float(np.mean(lag_expression))
            )
    for name, values in sorted(rows.items()):
        print(f"| {name} | {np.mean(values):.4f} +- {np.std(values):.4f} | n={len(values)} |")


def _load_model(checkpoint: str):
    """A trainer checkpoint folder's flow transformer, or the packaged model's ("" or "packaged")."""
    from avatarforcing.engine.checkpoint_format import load_flow_transformer
    from avatarforcing.engine.embedded.model import packaged_files

    if checkpoint and checkpoint != "packaged":
        return load_flow_transformer(checkpoint, "cpu")[0]
    weights, config = packaged_files()
    return load_flow_transformer(weights.parent, "cpu", weights_file=weights.name, config_file=config.name)[0]


def _heldout_items(data: str) -> list[dict]:
    from avatarforcing.engine.training.dataset import ConversationDataset

    dataset = ConversationDataset(data, "heldout")
    return [dataset[i] for i in range(len(dataset))]


def _listener_moments(items: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """Per item: the user's listener pauses and the moments with the avatar silent through the
    nod window (`metrics.NOD_WINDOW`), frame indices."""
    from avatarforcing.engine.embedded.audio_features import voiced_frames
    from avatarforcing.engine.training.metrics import listener_pauses, silent_moments

    pauses, silent = [], []
    for item in items:
        user, avatar = voiced_frames(item["user_audio"].numpy()), voiced_frames(item["avatar_audio"].numpy())
        pauses.append(listener_pauses(user, avatar))
        silent.append(silent_moments(avatar))
    return pauses, silent


def nods(args: argparse.Namespace) -> None:
    """Pause-locked head pitch: for each checkpoint, the raw samples' mean pitch trajectory after
    the user's listener pauses (`metrics.pause_locked_trajectory`), its RMS against chance (the
    same at random silent moments, `metrics.pause_lock`), and `nod_response`; the ground
    truth's first. ``--listen A U`` samples as a session does (guidance (2, 1) while the avatar
    speaks, (A, U) while it listens); otherwise guidance (2, 1) throughout."""
    from avatarforcing.engine.embedded.audio_features import voiced_frames
    from avatarforcing.engine.embedded.smoothing import MotionSmoother
    from avatarforcing.engine.guidance_schedule import VoicedGuidance
    from avatarforcing.engine.sampler import GuidanceScales
    from avatarforcing.engine.training.losers import make_loser, sample_motion
    from avatarforcing.engine.training.metrics import nod_response, pause_lock, pause_locked_trajectory
    from avatarforcing.schemas.motion_space import MOTION_SPACE

    torch.set_num_threads(1)
    pitch = MOTION_SPACE.index("pitch")
    items = _heldout_items(args.data)
    pauses, silent = _listener_moments(items)

    def summary(tracks: list[np.ndarray]) -> str:
        pitches = [x[:, pitch] for x in tracks]
        trajectory = pause_locked_trajectory(pitches, pauses)
        locked, chance = pause_lock(pitches, pauses, silent)
        responses = [nod_response(x, p) for x, p in zip(pitches, pauses)]
        return (
            f"pause-locked pitch peak {trajectory.max():+.3f} at {int(trajectory.argmax()) / 25:.2f} s, rms {locked:.3f}"
            f" (random silent moments: rms {chance:.3f}); nod_response {np.mean([r for r in responses if r is not None]):.2f}"
        )

    curves = {}

    def report(label: str, tracks: list[np.ndarray]) -> None:
        """Print (and keep for the plot) the tracks' summary, and with --smoothed also the same
        through the default engine's output smoothing (what the camera shows)."""
        variants = [(label, tracks)]
        if args.smoothed:
            variants.append((f"{label}, smoothed", [MotionSmoother()(x, 0) for x in tracks]))
        for name, shown in variants:
            curves[name] = pause_locked_trajectory([x[:, pitch] for x in shown], pauses)
            print(f"{name}: {summary(shown)}")

    speak = GuidanceScales(2.0, 1.0)
    print(f"{sum(len(p) for p in pauses)} listener pauses in {len(items)} sides")
    report("ground truth", [item["avatar_motion"].numpy() for item in items])
    for checkpoint in args.checkpoints:
        model = _load_model(checkpoint)
        sample = make_loser if args.drop_user else sample_motion
        tracks = []
        for i, item in enumerate(items):
            guidance = speak
            if args.listen:
                voiced = voiced_frames(item["avatar_audio"].numpy())
                guidance = VoicedGuidance(voiced, speak, GuidanceScales(*args.listen))
            conditions = (item["avatar_audio"], item["user_audio"], item["user_motion"], item["reference"])
            tracks.append(sample(model, *conditions, 5, guidance, args.seed + i).numpy())
        report(checkpoint, tracks)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        degrees = float(MOTION_SPACE.scales[pitch])  # degrees per normalized unit
        figure, axes = plt.subplots(figsize=(8, 4.5))
        for label, curve in curves.items():
            axes.plot(np.arange(len(curve)) / 25, curve * degrees, label=label)
        axes.axhline(0, color="k", lw=0.5)
        axes.set_xlabel("seconds after the user's listener pause")
        axes.set_ylabel("mean head pitch change (degrees)")
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=90)
        print(f"wrote {args.plot}")


def history(args: argparse.Namespace) -> None:
    """Does the model continue the head motion it is shown? For each checkpoint, training windows
    of K + 4M frames whose last block starts k frames after a listener pause (or a random silent
    moment): the true motion before it as clean history (as the stream's cache holds it), the
    block at sigma 1; the model's conditional mean of the block's head pitch (x - v in the
    model's units, averaged over 4 noise draws), relative to the last history frame, against
    the truth's: R^2 (1 = the truth, 0 = holding the last frame, below 0 = worse than that)."""
    from avatarforcing.engine.checkpoint_format import load_flow_transformer
    from avatarforcing.engine.motion_units import from_model_units, to_model_units
    from avatarforcing.engine.training.metrics import NOD_WINDOW
    from avatarforcing.engine.training.schedule import block_layout
    from avatarforcing.engine.training.window_model import WindowAttention, window_velocity
    from avatarforcing.schemas.motion_space import MOTION_SPACE

    torch.set_num_threads(1)
    pitch = MOTION_SPACE.index("pitch")
    items = _heldout_items(args.data)
    pauses, silent = _listener_moments(items)
    rng = np.random.default_rng(0)  # as many random silent moments as pauses, per item
    moments = [
        (p, list(rng.choice([t for t in s if t + NOD_WINDOW[1] < len(item["avatar_motion"])], len(p), replace=False)))
        if p
        else (p, [])
        for item, p, s in zip(items, pauses, silent)
    ]
    for checkpoint in args.checkpoints:
        model, _ = load_flow_transformer(checkpoint, "cpu")
        cfg = model.cfg
        frames = cfg.clip_frames + 4 * cfg.block_frames
        last = frames - cfg.block_frames  # first frame of the generated block
        attention = WindowAttention.build(cfg, block_layout(cfg, frames))
        print(checkpoint)
        for which, name in ((0, "after the user's pauses"), (1, "random silent moments")):
            for k in args.offsets:
                windows = [
                    (item, t + k - last)
                    for item, m in zip(items, moments)
                    for t in m[which]
                    if t + k - last >= 0 and t + k - last + frames <= len(item["avatar_motion"])
                ]
                x0, a, u, r = (
                    torch.stack([item[key][s : s + frames] for item, s in windows])
                    for key in ("avatar_motion", "avatar_audio", "user_audio", "user_motion")
                )
                r_s = torch.stack([item["reference"] for item, _ in windows])
                x0_model, r, r_s = (to_model_units(m, cfg) for m in (x0, r, r_s))
                t_frames = torch.zeros(x0.shape[:2])
                t_frames[:, last:] = 1000.0
                generator, means = torch.Generator().manual_seed(0), []
                for _ in range(4):
                    x = x0_model.clone()
                    x[:, last:] = torch.randn(x0[:, last:].shape, generator=generator)
                    with torch.no_grad():
                        mean = x - window_velocity(model, x, t_frames, r_s, a, u, r, attention)
                    means.append(from_model_units(mean, cfg)[:, last:, pitch])
                held = x0[:, last - 1 : last, pitch]
                predicted, truth = torch.stack(means).mean(0) - held, x0[:, last:, pitch] - held
                r2 = 1 - float(((predicted - truth) ** 2).sum() / (truth**2).sum())
                print(
                    f"  {name}, block {k:2d} frames after: {len(windows)} windows, truth rms {float(truth.pow(2).mean().sqrt()):.3f}, "
                    f"model rms {float(predicted.pow(2).mean().sqrt()):.3f}, R^2 {r2:+.2f}"
                )


def real(args: argparse.Namespace) -> None:
    import subprocess
    import sys

    import soundfile as sf

    from avatarforcing.engine.training.metrics import jitter, pearson
    from avatarforcing.integrations.face_params import FaceParamsExtractor
    from avatarforcing.integrations.media import iter_video_frames
    from avatarforcing.schemas.motion_space import MOTION_SPACE

    samples = Path(args.shared) / "reference" / "samples"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def tracked(video: Path) -> np.ndarray:
        """Normalized face parameters per frame (frames without a face left out)."""
        with FaceParamsExtractor(filter=False) as faces:
            rows = [faces.extract(image) for _, _, image in iter_video_frames(video)]
        return np.stack([MOTION_SPACE.normalize(r) if r is not None else np.full(13, np.nan) for r in rows])

    def groups(motion: np.ndarray) -> dict[str, float]:
        motion = motion[~np.isnan(motion).any(axis=1)]
        return {
            "pose": jitter(motion, tuple(MOTION_SPACE.pose_indices)),
            "expression": jitter(motion, tuple(MOTION_SPACE.expression_indices)),
        }

    person = groups(tracked(samples / "user.mp4"))
    print(f"person in user.mp4: jitter pose {person['pose']:.4f}, expression {person['expression']:.4f}")
    audio, rate = sf.read(str(samples / "avatar.wav"), dtype="float32")
    hop = rate // 25
    energy = np.log(np.array([np.mean(audio[i * hop : (i + 1) * hop] ** 2) + 1e-8 for i in range(len(audio) // hop)]))
    jaw = MOTION_SPACE.names.index("jaw_open")
    for smoothing in (True, False):
        results = []
        for seed in args.seeds:
            video = out / f"avatar_seed{seed}_{'smoothed' if smoothing else 'raw'}.mp4"
            command = [sys.executable, "-m", "avatarforcing.plugin", "render", "--portrait", str(samples / "rumi.jpg")]
            command += ["--avatar-audio", str(samples / "avatar.wav"), "--user-video", str(samples / "user.mp4")]
            command += ["--out", str(video), "--overwrite", "--set", f"model.seed={seed}"]
            command += ["--set", f"engines.default.smoothing={str(smoothing).lower()}"]
            if args.weights:
                command += ["--set", f"engines.default.weights={args.weights}"]
            subprocess.run(command, check=True, capture_output=True)
            motion = tracked(video)
            n = min(len(motion), len(energy))
            valid = ~np.isnan(motion[:n, jaw])
            results.append({**groups(motion), "lip": pearson(motion[:n, jaw][valid], energy[:n][valid])})
        for key in ("pose", "expression", "lip"):
            values = [r[key] for r in results]
            ratio = f" ({np.mean(values) / person[key]:.2f}x the person)" if key in person else ""
            print(
                f"avatar {'smoothed' if smoothing else 'raw'}: {key} {np.mean(values):.4f} +- {np.std(values):.4f}"
                f"{ratio} over seeds {args.seeds}"
            )


def lipsync(args: argparse.Namespace) -> None:
    import soundfile as sf

    from avatarforcing.engine.training.metrics import pearson
    from avatarforcing.plugin.api.types import InputTick, SessionInfo
    from avatarforcing.plugin.app.config import config_from_dict
    from avatarforcing.plugin.builtins.engines.embedded import DefaultEngine
    from avatarforcing.schemas.motion_space import MOTION_SPACE

    torch.set_num_threads(1)
    audio, rate = sf.read(
        str(Path(args.shared) / "reference" / "samples" / "avatar.wav"), dtype="float32", always_2d=True
    )
    audio = audio.mean(axis=1)
    hop = rate // 25
    frames = len(audio) // hop
    energy = np.log(np.mean(audio[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-8)
    silence = np.zeros(hop, np.float32)
    for smoothing in (False, True):
        values = []
        for seed in args.seeds:
            engine = DefaultEngine(face_tracking=False, weights=args.weights, smoothing=smoothing)
            engine.open(SessionInfo("lipsync", config_from_dict({"model": {"seed": seed}})))
            engine.set_guidance(2.0, 1.0)
            blocks = []
            for f in range(frames):
                tick = InputTick(f, 1, audio[f * hop : (f + 1) * hop], silence, [None])
                blocks += engine.generate(engine.extract(tick))
            blocks += engine.finish()
            engine.close()
            jaw = np.concatenate([b.latents for b in blocks])[:frames, MOTION_SPACE.jaw_index]
            values.append(pearson(jaw, energy[: len(jaw)]))
        print(
            f"{'smoothed' if smoothing else 'raw'}: PCC(jaw_open, log energy of avatar.wav) "
            f"{np.mean(values):.3f} +- {np.std(values):.3f} over seeds {args.seeds} ({[round(v, 3) for v in values]})"
        )


def curves(args: argparse.Namespace) -> None:
    """The flow-matching loss of each run's three stages (`curves.jsonl` as the trainer logs it,
    every 10 steps), as a 50-step running mean, one panel per stage; ``--shipped`` draws that run
    thicker."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [
        ("stage1", "stage 1 (lr 8e-4, batch 24)"),
        ("stage1b", "stage 1 continued (lr 3e-4, batch 32)"),
        ("stage2", "stage 2: FM + 0.1 x Diffusion-DPO"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    for run in map(Path, args.runs):
        shipped = bool(args.shipped) and run == Path(args.shipped)
        label = f"{run.name}{' (shipped)' if shipped else ''}"
        for axis, (stage, title) in zip(axes, stages):
            lines = (run / stage / "curves.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
            steps = np.array([r["step"] for r in records])
            loss = np.array([r["fm_loss"] for r in records])
            mean = np.convolve(loss, np.ones(5) / 5, mode="valid")  # 5 records = 50 steps
            axis.plot(steps[4:], mean, lw=2.2 if shipped else 1.0, label=label)
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("step")
    axes[0].set_ylabel("flow-matching loss (50-step mean)")
    axes[0].set_yscale("log")
    axes[-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


def sheet(args: argparse.Namespace) -> None:
    """Contact sheet of 512 x 512 renders: row r holds frames first, first + every, ... of video r,
    cropped to the face (rows 60-420, columns 110-400) and shrunk to 145 x 180."""
    import cv2

    from avatarforcing.integrations.media import iter_video_frames

    wanted = {args.first + k * args.every for k in range(args.count)}
    rows = []
    for video in args.videos:
        tiles = [
            cv2.resize(image[60:420, 110:400], (145, 180))
            for index, (_, _, image) in enumerate(iter_video_frames(video))
            if index in wanted
        ]
        rows.append(np.hstack(tiles))
    cv2.imwrite(args.out, cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--weights", default="", help="weights folder (default: the packaged ones)")
    b.add_argument("--nfe", type=int, default=5)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument(
        "--backend", default="auto", help="the generator's backend, as [model] backend (auto, torch_cpu, ...)"
    )
    b.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    s = sub.add_parser("smile")
    s.add_argument("--data", required=True)
    s.add_argument("checkpoints", nargs="+")
    m = sub.add_parser("smoothing")
    m.add_argument("--data", required=True)
    m.add_argument("--seeds", type=int, nargs="+", default=[0, 1000, 2000])
    m.add_argument("--checkpoint", default="", help="a trainer checkpoint folder (default: the packaged model)")
    r = sub.add_parser("real")
    r.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    r.add_argument("--seeds", type=int, nargs="+", default=[20, 21, 22])
    r.add_argument("--out", default="real_eval")
    r.add_argument("--weights", default="", help="weights folder (default: the packaged ones)")
    nd = sub.add_parser("nods")
    nd.add_argument("--data", required=True)
    nd.add_argument("--seed", type=int, default=0, help="sampling seed of the first item (item i: seed + i)")
    nd.add_argument("--drop-user", action="store_true", help="sample with the user's conditions null (the control)")
    nd.add_argument(
        "--listen",
        type=float,
        nargs=2,
        metavar=("A", "U"),
        help="listening guidance (the session's speak/listen switching)",
    )
    nd.add_argument("--smoothed", action="store_true", help="also through the default engine's output smoothing")
    nd.add_argument("--plot", metavar="PNG", help="write the pause-locked trajectories (degrees) here")
    nd.add_argument("checkpoints", nargs="+", help="trainer checkpoint folders, or 'packaged'")
    hist = sub.add_parser("history")
    hist.add_argument("--data", required=True)
    hist.add_argument(
        "--offsets", type=int, nargs="+", default=[4, 8, 12, 16], help="frames from the moment to the block"
    )
    hist.add_argument("checkpoints", nargs="+")
    lip = sub.add_parser("lipsync")
    lip.add_argument("--weights", default="", help="weights folder (default: the packaged ones)")
    lip.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    lip.add_argument("--seeds", type=int, nargs="+", default=list(range(20, 30)))
    cur = sub.add_parser("curves")
    cur.add_argument("--out", required=True, help="PNG to write")
    cur.add_argument("--shipped", default="", help="the run whose stage 2 is packaged (drawn thicker)")
    cur.add_argument("runs", nargs="+", help="folders with stage1/, stage1b/, stage2/ trainer outputs")
    sh = sub.add_parser("sheet")
    sh.add_argument("--out", required=True, help="image to write (.png or .jpg)")
    sh.add_argument("--first", type=int, default=100, help="first frame")
    sh.add_argument("--every", type=int, default=12, help="frames between tiles")
    sh.add_argument("--count", type=int, default=10, help="tiles per row")
    sh.add_argument("videos", nargs="+", help="one row each")
    args = parser.parse_args()
    {
        "bench": bench,
        "smile": smile,
        "smoothing": smoothing,
        "real": real,
        "lipsync": lipsync,
        "nods": nods,
        "history": history,
        "curves": curves,
        "sheet": sheet,
    }[args.what](args)


if __name__ == "__main__":
    main()
