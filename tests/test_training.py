"""Training: per-block noise levels, masks consistent with streaming, losses, losers, the
trainer on a small synthetic dataset (loss falls, samples learn the mapping, DPO raises the
held-out margin), determinism and resume, the dataset format, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avatarforcing.engine.attention import first_clip_self_mask
from avatarforcing.engine.checkpoint_format import load_flow_transformer
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.generator_step import FirstClipStep
from avatarforcing.engine.sampler import FlowMatchingEulerSampler, GuidanceScales, sigma_grid
from avatarforcing.engine.training.dataset import (
    ConversationDataset,
    DatasetError,
    create_dataset,
    read_manifest,
    write_item,
)
from avatarforcing.engine.training.losers import make_loser, sample_motion
from avatarforcing.engine.training.losses import diffusion_dpo_loss, flow_matching_loss, preference_margin
from avatarforcing.engine.training.schedule import add_noise, block_layout, frame_values, sample_block_sigmas
from avatarforcing.engine.training.trainer import TrainConfig, Trainer, collate
from avatarforcing.engine.training.window_model import WindowAttention, training_self_mask, window_velocity
from avatarforcing.plugin.app.cli import main

CFG = ModelConfig(dim_w=4, dim_a=8, dim_h=64, num_heads=4, transformer_depth=2, sec=1, num_frames_per_block=4)


def _smooth(rng, frames, dims, width=5):
    x = rng.standard_normal((frames + width, dims)).astype(np.float32)
    return np.stack([x[i : i + frames] for i in range(width)]).mean(0) * 1.5


def write_synthetic(root, items=6, frames=120, seed=0, heldout=2):
    """Avatar motion = projection of its audio features + 0.8 * the user's motion (learnable,
    and reactive: a model that ignores the user misses the second term)."""
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((CFG.dim_a, CFG.dim_w)).astype(np.float32) / math.sqrt(CFG.dim_a)
    create_dataset(root, "official", CFG.dim_a, CFG.dim_w, {"synthetic": True})
    for i in range(items):
        a, u, um = _smooth(rng, frames, CFG.dim_a), _smooth(rng, frames, CFG.dim_a), _smooth(rng, frames, CFG.dim_w)
        tensors = {
            "avatar_audio": a,
            "user_audio": u,
            "avatar_motion": a @ proj + 0.8 * um,
            "user_motion": um,
            "reference": np.zeros(CFG.dim_w, np.float32),
            "avatar_energy": np.abs(a).mean(1),
        }
        write_item(root, f"conv{i}", tensors, "heldout" if i >= items - heldout else "train", source="synthetic")
    return root


def _random_transformer(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    tf = FlowTransformer(cfg).eval()
    with torch.no_grad():
        for p in tf.parameters():
            p.normal_(0, 0.2)
    return tf


# -- noise levels per block -----------------------------------------------------------------------


def test_noise_levels_are_independent_per_block_and_shared_inside_a_block():
    layout = block_layout(CFG, 25 + 4 * 3)
    assert layout.starts == (0, 25, 29, 33) and layout.stops == (25, 29, 33, 37)
    sig = sample_block_sigmas(layout, 4000, torch.Generator().manual_seed(0), clean_prob=0.25)
    grid = set(sigma_grid()[0].tolist()) | {0.0}
    assert set(sig.unique().tolist()) <= grid
    frames = frame_values(sig, layout)
    for b, (lo, hi) in enumerate(zip(layout.starts, layout.stops)):
        assert torch.equal(frames[:, lo:hi], sig[:, b : b + 1].expand(-1, hi - lo))
    assert (sig[:, 0] > 0).all()  # the first clip is never a clean history block
    clean = (sig[:, 1:] == 0).float().mean()
    assert 0.22 < clean < 0.28
    noisy = sig[:, 1:][sig[:, 1:] > 0]
    assert abs(noisy.mean() - 0.5) < 0.02  # uniform on the grid
    corr = np.corrcoef(sig[:, 1].numpy(), sig[:, 2].numpy())[0, 1]
    assert abs(corr) < 0.06  # independent blocks
    x0, eps = torch.ones(1, 37, 4), torch.zeros(1, 37, 4)
    assert torch.allclose(add_noise(x0, eps, frames[:1]), (1 - frames[:1])[..., None].expand(-1, -1, 4))


def test_clean_first_clip_makes_every_block_but_the_last_clean_history_at_the_given_rate():
    layout = block_layout(CFG, 25 + 4 * 3)
    sig = sample_block_sigmas(layout, 4000, torch.Generator().manual_seed(0), clean_prob=0.5, clean_first_clip=True)
    clean = (sig == 0).float().mean(0)
    assert (clean[:-1] > 0.46).all() and (clean[:-1] < 0.54).all()  # the first clip included
    assert clean[-1] == 0  # the last block always carries the loss
    default = sample_block_sigmas(layout, 4000, torch.Generator().manual_seed(0), clean_prob=0.5)
    assert (default[:, 0] > 0).all() and (default[:, 1:] == 0).float().mean() > 0.46


def test_windows_must_be_the_first_clip_plus_whole_blocks():
    with pytest.raises(ValueError, match="try 25, 29, 33"):
        block_layout(CFG, 30)


# -- masks and the training forward ----------------------------------------------------------------


def test_training_mask_matches_what_streaming_attends_to():
    layout = block_layout(CFG, 25 + 4 * 3)
    mask = training_self_mask(CFG, layout)
    assert torch.equal(mask[:25, :25], first_clip_self_mask(25))  # the first clip's own mask
    assert not mask[:23, 28:].any()  # lookahead 2: frame 22 sees up to frame 24 only
    for q in range(25, 37):
        start = layout.starts[int(layout.block_of_frame[q])]
        seen = mask[q].nonzero().flatten()
        # a streaming block at s attends to K frames: self cache + context + itself, i.e. [s-21, s+4)
        assert seen.min() == start - (CFG.clip_frames - CFG.block_frames)
        assert seen.max() == min(q + 2, 36)


def test_a_first_clip_window_is_exactly_a_first_clip_step_evaluation():
    tf = _random_transformer()
    g = torch.Generator().manual_seed(1)
    k = CFG.clip_frames
    noise, a, u = (
        torch.randn(1, k, 4, generator=g),
        torch.randn(1, k, 8, generator=g),
        torch.randn(1, k, 8, generator=g),
    )
    r, r_s = torch.randn(1, k, 4, generator=g), torch.randn(1, 4, generator=g)
    step = FirstClipStep(tf, FlowMatchingEulerSampler(4))
    step.recorder = []
    with torch.no_grad():
        step(noise, a, u, r, r_s, torch.tensor([2.0, 1.0]))
        v3 = step.recorder[0][0]  # [null, avatar, user] at t = 1000
        att = WindowAttention.build(CFG, block_layout(CFG, k))
        t = torch.full((1, k), 1000.0)
        z = torch.zeros_like
        branches = [(z(a), z(u), z(r)), (a, z(u), z(r)), (z(a), u, r)]
        for i, (aa, uu, rr) in enumerate(branches):
            v = window_velocity(tf, noise, t, r_s, aa, uu, rr, att)
            torch.testing.assert_close(v, v3[i : i + 1], rtol=1e-5, atol=2e-4)


# -- losses ------------------------------------------------------------------------------------


def test_dpo_loss_sign_rewards_preferring_winners():
    ref_w, ref_l = torch.tensor([1.0]), torch.tensor([1.0])
    assert diffusion_dpo_loss(ref_w, ref_w, ref_l, ref_l, 1000) == pytest.approx(math.log(2))
    better_on_winner = diffusion_dpo_loss(torch.tensor([0.999]), ref_w, ref_l, ref_l, 1000)
    better_on_loser = diffusion_dpo_loss(ref_w, ref_w, torch.tensor([0.999]), ref_l, 1000)
    assert better_on_winner < math.log(2) < better_on_loser
    assert preference_margin(torch.tensor([0.999]), ref_w, ref_l, ref_l) > 0
    # gradient descent pushes the winner's error down and the loser's error up
    err_w, err_l = torch.tensor([1.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    diffusion_dpo_loss(err_w, ref_w, err_l, ref_l, 1000).backward()
    assert err_w.grad > 0 > err_l.grad
    assert float(err_w.grad) == pytest.approx(1000 / 4)  # beta/2 * (1 - sigmoid(0))


def test_error_weights_scale_each_frame_and_dim_of_the_flow_matching_loss():
    g = torch.Generator().manual_seed(0)
    v, target = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    frames = torch.ones(2, 5)
    frames[:, :2] = 0  # clean history: no loss
    plain = flow_matching_loss(v, target, frames)
    assert flow_matching_loss(v, target, frames, torch.ones(2, 5, 4)) == pytest.approx(float(plain))
    weight = torch.ones(2, 5, 4)
    weight[:, :, 1] = 0  # drop one dim everywhere
    sq = (v - target).pow(2)
    sq[:, :, 1] = 0
    assert flow_matching_loss(v, target, frames, weight) == pytest.approx(float(sq[:, 2:].mean(-1).mean()))
    weight = torch.ones(2, 5, 4)
    weight[:, :2] = 50  # weights on clean frames change nothing
    assert flow_matching_loss(v, target, frames, weight) == pytest.approx(float(plain))


# -- losers ------------------------------------------------------------------------------------


def _conversation_tensors(frames: int = 40):
    """Random avatar audio, user audio [frames, 8], user motion [frames, 4] and r_s [4] (seed 2)."""
    g = torch.Generator().manual_seed(2)
    return (
        torch.randn(frames, 8, generator=g),
        torch.randn(frames, 8, generator=g),
        torch.randn(frames, 4, generator=g),
        torch.randn(4, generator=g),
    )


def test_losers_are_reference_samples_without_the_user():
    tf = _random_transformer()
    a, u, r, r_s = _conversation_tensors()
    loser = make_loser(tf, a, u, r, r_s, nfe=4, seed=3)
    assert loser.shape == (40, 4)
    assert torch.equal(
        loser, sample_motion(tf, a, torch.zeros_like(u), torch.zeros_like(r), r_s, 4, GuidanceScales(), 3)
    )
    assert torch.equal(loser, make_loser(tf, a, u * 5 + 1, -r, r_s, nfe=4, seed=3))  # the user plays no part
    assert not torch.allclose(loser, make_loser(tf, a * 2, u, r, r_s, nfe=4, seed=3))  # the avatar's audio does
    assert not torch.allclose(loser, sample_motion(tf, a, u, r, r_s, 4, GuidanceScales(), 3))


def test_guidance_per_block_follows_the_avatars_voice_as_a_session_does():
    """`VoicedGuidance` gives the speaking scales while the avatar's voice was heard within the
    release time before a block's end, the listening scales otherwise; `sample_motion` sets
    them before each block (a constant schedule is the fixed guidance, bit for bit)."""
    from avatarforcing.engine.guidance_schedule import VoicedGuidance
    from avatarforcing.engine.stream import MotionStream, generate

    speak, listen = GuidanceScales(2.0, 1.0), GuidanceScales(1.0, 3.0)
    voiced = np.zeros(60, bool)
    voiced[10:20] = True
    schedule = VoicedGuidance(voiced, speak, listen, release_frames=5)
    assert schedule(12) is speak  # voice in the block
    assert schedule(24) is speak and schedule(25) is listen  # released 5 frames after the last voiced one
    assert schedule(8) is listen

    tf = _random_transformer()
    a, u, r, r_s = _conversation_tensors()
    stops = []

    def constant(stop: int) -> GuidanceScales:
        stops.append(stop)
        return speak

    fixed = sample_motion(tf, a, u, r, r_s, 4, speak, 3)
    one_shot = generate(
        MotionStream(tf, r_s[None], FlowMatchingEulerSampler(4), speak, seed=3), a[None], u[None], r[None]
    )
    assert torch.equal(fixed, one_shot[0])  # block by block is the one-shot stream
    assert torch.equal(sample_motion(tf, a, u, r, r_s, 4, constant, 3), fixed)
    clip, block = CFG.clip_frames, CFG.block_frames
    assert stops[: len(range(clip, 40 + block, block))] == list(range(clip, 40 + block, block))
    # listening after the first clip and one block: those frames are the same, the later ones differ
    switching = sample_motion(tf, a, u, r, r_s, 4, lambda stop: speak if stop <= clip + block else listen, 3)
    assert torch.equal(switching[: clip + block], fixed[: clip + block])
    assert not torch.allclose(switching[clip + block :], fixed[clip + block :])


# -- the trainer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stage1(dataset, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("stage1")
    result = Trainer(TrainConfig(dataset, out, CFG, steps=300, batch=8, lr=1e-3, log_every=10, seed=0)).run()
    return result


def _sample_error(tf, dataset, nfe=6):
    ds = ConversationDataset(dataset, "heldout")
    errors = []
    for i in range(len(ds)):
        it = ds[i]
        out = sample_motion(
            tf,
            it["avatar_audio"],
            it["user_audio"],
            it["user_motion"],
            it["reference"],
            nfe,
            GuidanceScales(1.0, 1.0),
            i,
        )
        errors.append(float((out - it["avatar_motion"]).pow(2).mean()))
    return float(np.mean(errors))


def test_stage1_loss_falls_and_streamed_samples_learn_the_mapping(stage1, dataset):
    records = [json.loads(line) for line in stage1.curves.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 301, 10))
    early, late = np.mean([r["loss"] for r in records[:3]]), np.mean([r["loss"] for r in records[-3:]])
    assert late < 0.6 * early
    trained, _ = load_flow_transformer(stage1.checkpoint)
    untrained = FlowTransformer(CFG).eval()
    trained_error, untrained_error = _sample_error(trained, dataset), _sample_error(untrained, dataset)
    assert trained_error < 0.5 * untrained_error


def test_stage2_raises_the_heldout_likelihood_margin(stage1, dataset, tmp_path):
    out = tmp_path / "stage2"
    result = Trainer(
        TrainConfig(
            dataset,
            out,
            CFG,
            stage=2,
            reference=stage1.checkpoint,
            steps=40,
            batch=8,
            lr=3e-4,
            log_every=10,
            loser_nfe=6,
        )
    ).run()
    assert result.margin_before == pytest.approx(0.0, abs=1e-6)  # theta starts as the reference
    assert result.margin_after > 0.002
    assert result.loser_gap_after > result.loser_gap_before
    records = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {"fm_loss", "dpo_loss", "margin"} <= set(records[0])


def test_training_is_deterministic_and_resumes_exactly(dataset, tmp_path):
    def config(out, steps, resume=False):
        return TrainConfig(
            dataset, out, CFG, steps=steps, batch=2, log_every=1, checkpoint_every=100, seed=5, resume=resume
        )

    Trainer(config(tmp_path / "a", 6)).run()
    Trainer(config(tmp_path / "b", 3)).run()
    Trainer(config(tmp_path / "b", 6, resume=True)).run()
    weights_a, _ = load_flow_transformer(tmp_path / "a" / "checkpoint")
    weights_b, _ = load_flow_transformer(tmp_path / "b" / "checkpoint")
    for (name, p), (_, q) in zip(weights_a.named_parameters(), weights_b.named_parameters()):
        assert torch.equal(p, q), name
    curves = lambda d: [json.loads(x)["loss"] for x in (d / "curves.jsonl").read_text().splitlines()]
    assert curves(tmp_path / "a") == curves(tmp_path / "b")


# -- dataset format ----------------------------------------------------------------------------


def test_dataset_items_round_trip_and_bad_items_are_refused(tmp_path):
    root = write_synthetic(tmp_path / "d", items=3, frames=40, heldout=1)
    manifest = read_manifest(root)
    assert [(e["id"], e["frames"], e["split"]) for e in manifest["items"]] == [
        ("conv0", 40, "train"),
        ("conv1", 40, "train"),
        ("conv2", 40, "heldout"),
    ]
    train = ConversationDataset(root, "train")
    window = train.sample_window(np.random.default_rng(0), 29)
    assert window["avatar_audio"].shape == (29, 8) and window["user_motion"].shape == (29, 4)
    assert torch.equal(
        window["avatar_motion"], train[int(window["item"])]["avatar_motion"][int(window["start"]) :][:29]
    )
    with pytest.raises(DatasetError, match="no item has 41 frames"):
        train.sample_window(np.random.default_rng(0), 41)
    good = {k: v.numpy() for k, v in train[0].items()}
    with pytest.raises(DatasetError, match=r"user_motion \(40, 5\)"):
        write_item(root, "bad", {**good, "user_motion": np.zeros((40, 5))}, "train")
    with pytest.raises(DatasetError, match="split must be"):
        write_item(root, "bad", good, "test")
    with pytest.raises(DatasetError, match="negative values in loss_weight"):
        write_item(root, "bad", {**good, "loss_weight": -np.ones((40, 4))}, "train")
    with pytest.raises(DatasetError, match=r"loss_weight \(40,\)"):
        write_item(root, "bad", {**good, "loss_weight": np.ones(40)}, "train")
    weighted = {**good, "loss_weight": np.full((40, 4), 3.0)}
    write_item(root, "conv1", weighted, "train")  # one item with weights, one without
    windows = [ConversationDataset(root, "train").sample_window(np.random.default_rng(s), 29) for s in range(8)]
    batch = collate(windows, torch.device("cpu"))
    expected = torch.stack([torch.full((29, 4), 3.0 if int(w["item"]) == 1 else 1.0) for w in windows])
    assert torch.equal(batch["loss_weight"], expected) and len({int(w["item"]) for w in windows}) == 2
    with pytest.raises(DatasetError, match="existing dataset"):
        create_dataset(root, "default", 8, 4)


# -- CLI ---------------------------------------------------------------------------------------


def test_train_and_eval_commands_end_to_end(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    model_config = json.dumps(
        {"dim_h": 32, "num_heads": 4, "transformer_depth": 1, "sec": 1, "num_frames_per_block": 4}
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(dataset),
                "--out",
                str(out),
                "--model-config",
                model_config,
                "--steps",
                "4",
                "--batch",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (out / "checkpoint" / "flow_transformer.safetensors").is_file() and (out / "curves.jsonl").is_file()
    assert (
        main(
            [
                "train",
                "--data",
                str(dataset),
                "--out",
                str(tmp_path / "s2"),
                "--stage",
                "2",
                "--reference",
                str(out / "checkpoint"),
                "--steps",
                "2",
                "--batch",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "held-out likelihood margin" in capsys.readouterr().out
    table, js = tmp_path / "table.md", tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval",
                "--data",
                str(dataset),
                "--checkpoint",
                str(tmp_path / "s2" / "checkpoint"),
                "--out",
                str(table),
                "--json",
                str(js),
                "--nfe",
                "3",
                "--drop-user",
            ]
        )
        == 0
    )
    metrics = json.loads(js.read_text())
    assert {"rPCC_expression", "variance_pose", "SID_pose", "jitter_expression"} <= set(metrics)
    assert table.read_text().startswith("| metric | generated | ground truth |")
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "x"), "--stage", "2"]) == 2
    assert "needs --reference" in capsys.readouterr().err
