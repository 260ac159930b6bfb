"""Training loop: stage 1 (flow matching with diffusion forcing) and stage 2 (preference
optimisation: stage-1 loss + dpo_weight * Diffusion-DPO against the frozen stage-1 model).

Output folder OUT: `checkpoint/` (flow-transformer checkpoint, `engine.flow_checkpoint`),
`resume/` (optimizer, step, RNG states; `resume=True` continues bit-exactly), `curves.jsonl`
(one JSON object per logged step), `curves.png` (when matplotlib is present), `result.json`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatarforcing.engine.checkpoint_format import load_flow_transformer, save_flow_transformer
from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.flow_transformer import FlowTransformer
from avatarforcing.engine.motion_units import to_model_units
from avatarforcing.engine.training.dataset import SEQUENCE_KEYS, ConversationDataset
from avatarforcing.engine.training.losers import make_loser
from avatarforcing.engine.training.losses import (
    diffusion_dpo_loss,
    flow_matching_loss,
    per_sample_error,
    preference_margin,
)
from avatarforcing.engine.training.schedule import (
    BlockLayout,
    add_noise,
    block_layout,
    frame_values,
    sample_block_sigmas,
    velocity_target,
)
from avatarforcing.engine.training.window_model import WindowAttention, window_velocity


@dataclass(frozen=True)
class ConditionDropout:
    """Per-sample probabilities of replacing conditions by the null condition (zeros), so the
    sampler's CFG branches ([null, avatar audio only, user only]) are all trained."""

    avatar_audio: float = 0.1
    user_audio: float = 0.1
    user_motion: float = 0.1
    user: float = 0.1  # both user streams together (the avatar-audio-only branch)
    everything: float = 0.1  # all three (the null branch)
    reference: float = 0.05  # r_s


@dataclass
class TrainConfig:
    data: Path
    out: Path
    model: ModelConfig
    stage: int = 1
    reference: Path | None = None  # stage-1 checkpoint: frozen reference and initialisation (stage 2)
    init: Path | None = None  # optional checkpoint to start stage 1 from (fine-tuning)
    steps: int = 1000
    batch: int = 8
    lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    window: int | None = None  # frames; default K + 2M
    clean_block_prob: float = 0.25
    clean_first_clip: bool = False  # the first clip may be clean history too (schedule.sample_block_sigmas)
    dropout: ConditionDropout = field(default_factory=ConditionDropout)
    dpo_weight: float = 0.1
    dpo_beta: float = 1000.0
    loser_nfe: int = 10
    loser_guidance: float = 2.0
    margin_windows: int = 4  # held-out windows per item for the likelihood margin
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    log_every: int = 10
    checkpoint_every: int = 200
    resume: bool = False

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.stage == 2 and self.reference is None:
            raise ValueError("stage 2 needs --reference: the stage-1 checkpoint (frozen reference and starting point)")
        if min(self.steps, self.batch) < 1 or self.lr <= 0:
            raise ValueError("steps and batch must be >= 1 and lr > 0")
        if not 0 <= self.clean_block_prob < 1:
            raise ValueError(f"clean_block_prob must be in [0, 1), got {self.clean_block_prob}")

    @property
    def window_frames(self) -> int:
        return self.window or self.model.clip_frames + 2 * self.model.block_frames


@dataclass
class TrainResult:
    steps: int
    final_loss: float
    first_loss: float
    checkpoint: Path
    curves: Path
    margin_before: float | None = None  # stage 2: held-out likelihood margin (0 at theta = ref)
    margin_after: float | None = None
    loser_gap_before: float | None = None  # stage 2: err(loser) - err(winner) of the model, held out
    loser_gap_after: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_dataset_matches(cfg: ModelConfig, dataset: ConversationDataset) -> None:
    h = dataset.header
    if (h.dim_a, h.dim_w) != (cfg.dim_a, cfg.dim_w) or h.fps != cfg.fps:
        raise ValueError(
            f"dataset {dataset.root} has dim_a {h.dim_a}, dim_w {h.dim_w}, fps {h.fps} but the model config has "
            f"dim_a {cfg.dim_a}, dim_w {cfg.dim_w}, fps {cfg.fps}"
        )


MOTION_KEYS = ("avatar_motion", "user_motion", "reference", "loser")


def to_model_batch(batch: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The batch's motion (dataset units) in the model's units (`ModelConfig.motion_scale`)."""
    return {k: to_model_units(v, cfg) if k in MOTION_KEYS else v for k, v in batch.items()}


def collate(windows: list[dict[str, Tensor]], device: torch.device) -> dict[str, Tensor]:
    out = {k: torch.stack([w[k] for w in windows]).to(device) for k in (*SEQUENCE_KEYS, "reference")}
    if any("loss_weight" in w for w in windows):  # items without one weigh every error 1
        ones = torch.ones_like(windows[0]["avatar_motion"])
        out["loss_weight"] = torch.stack([w.get("loss_weight", ones) for w in windows]).to(device)
    out["item"] = torch.stack([w["item"] for w in windows])
    out["start"] = torch.stack([w["start"] for w in windows])
    return out


def apply_dropout(
    batch: dict[str, Tensor], p: ConditionDropout, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A, U, R, r_s) with per-sample null conditions drawn from `p`."""
    b = batch["avatar_audio"].shape[0]
    draw = torch.rand(b, 6, generator=generator)
    everything = draw[:, 4] < p.everything
    user = everything | (draw[:, 3] < p.user)
    keep_a = ~(everything | (draw[:, 0] < p.avatar_audio))
    keep_u = ~(user | (draw[:, 1] < p.user_audio))
    keep_r = ~(user | (draw[:, 2] < p.user_motion))
    keep_ref = ~(draw[:, 5] < p.reference)
    dev = batch["avatar_audio"].device

    def mask(x: Tensor, keep: Tensor) -> Tensor:
        return x * keep.to(dev, x.dtype).view(-1, *([1] * (x.dim() - 1)))

    return (
        mask(batch["avatar_audio"], keep_a),
        mask(batch["user_audio"], keep_u),
        mask(batch["user_motion"], keep_r),
        mask(batch["reference"], keep_ref),
    )


@dataclass
class NoisedWindow:
    """Noise, per-frame sigma and raw timestep, and loss weights of one batch of windows."""

    noise: Tensor  # [B, W, D]
    sigma: Tensor  # [B, W]
    t: Tensor  # [B, W] = 1000 * sigma
    weight: Tensor  # [B, W] 1 where the frame carries noise


def draw_noise(
    layout: BlockLayout,
    shape: tuple[int, int, int],
    generator: torch.Generator,
    clean_prob: float,
    device,
    clean_first_clip: bool = False,
) -> NoisedWindow:
    sigma_blocks = sample_block_sigmas(layout, shape[0], generator, clean_prob, clean_first_clip=clean_first_clip)
    sigma = frame_values(sigma_blocks, layout).to(device)
    noise = torch.randn(shape, generator=generator).to(device)
    return NoisedWindow(noise, sigma, sigma * 1000.0, (sigma > 0).float())


class Trainer:
    """Builds model, data and optimiser from a `TrainConfig`; `run(on_log)` trains and saves."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = cfg = config
        self.device = resolve_device(cfg.device)
        self.train_set = ConversationDataset(cfg.data, "train")
        self.heldout_set = ConversationDataset(cfg.data, "heldout")
        if len(self.train_set) == 0:
            raise ValueError(f"{cfg.data}: no items in the train split")
        check_dataset_matches(cfg.model, self.train_set)
        self.layout = block_layout(cfg.model, cfg.window_frames)
        self.attention = WindowAttention.build(cfg.model, self.layout, self.device)
        torch.manual_seed(cfg.seed)
        self.model, self.reference = self._build_models()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.generator = torch.Generator().manual_seed(cfg.seed + 1)
        self.rng = np.random.default_rng(cfg.seed + 2)
        self.step = 0
        self.losers: dict[int, Tensor] = {}
        self.heldout_losers: dict[int, Tensor] = {}
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.curves_path = cfg.out / "curves.jsonl"
        self.checkpoint_path = cfg.out / "checkpoint"

    # -- setup -------------------------------------------------------------------------------
    def _build_models(self) -> tuple[FlowTransformer, FlowTransformer | None]:
        cfg = self.config
        start = cfg.reference if cfg.stage == 2 else cfg.init
        if start is not None:
            model, _ = load_flow_transformer(start, self.device)
            if model.cfg != cfg.model:
                raise ValueError(
                    f"{start}: its model config differs from the requested one; omit --model-config to use the checkpoint's"
                )
        else:
            model = FlowTransformer(cfg.model).to(self.device)
        model.train()
        reference = None
        if cfg.stage == 2:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        return model, reference

    def _item_loser(self, dataset: ConversationDataset, index: int) -> Tensor:
        item = dataset[index]
        return make_loser(
            self.reference,
            item["avatar_audio"],
            item["user_audio"],
            item["user_motion"],
            item["reference"],
            nfe=self.config.loser_nfe,
            guidance=_avatar_guidance(self.config.loser_guidance),
            seed=self.config.seed + index,
        )

    def build_losers(self) -> None:
        """Stage 2: one loser per item of both splits, from the frozen reference (cached)."""
        self.losers = {i: self._item_loser(self.train_set, i) for i in range(len(self.train_set))}
        self.heldout_losers = {i: self._item_loser(self.heldout_set, i) for i in range(len(self.heldout_set))}

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _velocity(
        self, model: FlowTransformer, x: Tensor, t: Tensor, r_s: Tensor, a: Tensor, u: Tensor, r: Tensor
    ) -> Tensor:
        with self._autocast():
            return window_velocity(model, x, t, r_s, a, u, r, self.attention).float()

    def _sample_batch(self) -> dict[str, Tensor]:
        windows = [self.train_set.sample_window(self.rng, self.layout.frames) for _ in range(self.config.batch)]
        batch = collate(windows, self.device)
        if self.config.stage == 2:
            batch["loser"] = torch.stack(
                [
                    self.losers[int(i)][int(s) : int(s) + self.layout.frames]
                    for i, s in zip(batch["item"], batch["start"])
                ]
            ).to(self.device)
        return to_model_batch(batch, self.model.cfg)

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        batch = self._sample_batch()
        x0 = batch["avatar_motion"]
        nw = draw_noise(
            self.layout, tuple(x0.shape), self.generator, cfg.clean_block_prob, self.device, cfg.clean_first_clip
        )
        a, u, r, r_s = apply_dropout(batch, cfg.dropout, self.generator)
        x_w = add_noise(x0, nw.noise, nw.sigma)
        v_w = velocity_target(x0, nw.noise)
        v = self._velocity(self.model, x_w, nw.t, r_s, a, u, r)
        fm = flow_matching_loss(v, v_w, nw.weight, batch.get("loss_weight"))
        metrics = {"fm_loss": float(fm.detach())}
        loss = fm
        if cfg.stage == 2:
            dpo, margin = self._dpo_terms(batch, nw)
            loss = fm + cfg.dpo_weight * dpo
            metrics |= {"dpo_loss": float(dpo.detach()), "margin": float(margin.mean())}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup_steps))
        self.optimizer.step()
        self.step += 1
        return {
            "loss": float(loss.detach()),
            **metrics,
            "grad_norm": float(grad_norm),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _dpo_errors(self, model: FlowTransformer, batch: dict[str, Tensor], nw: NoisedWindow) -> tuple[Tensor, Tensor]:
        """Per-sample velocity errors on winners and losers (same noise and t), full conditions."""
        x0_w, x0_l = batch["avatar_motion"], batch["loser"]
        x = torch.cat((add_noise(x0_w, nw.noise, nw.sigma), add_noise(x0_l, nw.noise, nw.sigma)))
        target = torch.cat((velocity_target(x0_w, nw.noise), velocity_target(x0_l, nw.noise)))
        two = lambda v: torch.cat((v, v))
        v = self._velocity(
            model,
            x,
            two(nw.t),
            two(batch["reference"]),
            two(batch["avatar_audio"]),
            two(batch["user_audio"]),
            two(batch["user_motion"]),
        )
        err = per_sample_error(v, target, two(nw.weight))
        return err.chunk(2)

    def _dpo_terms(self, batch: dict[str, Tensor], nw: NoisedWindow) -> tuple[Tensor, Tensor]:
        err_w, err_l = self._dpo_errors(self.model, batch, nw)
        with torch.no_grad():
            ref_w, ref_l = self._dpo_errors(self.reference, batch, nw)
        dpo = diffusion_dpo_loss(err_w, ref_w, err_l, ref_l, self.config.dpo_beta)
        return dpo, preference_margin(err_w, ref_w, err_l, ref_l).detach()

    # -- held-out likelihood margin ----------------------------------------------------------
    @torch.no_grad()
    def heldout_margin(self) -> tuple[float, float]:
        """(mean preference margin vs the reference, mean err_theta(loser) - err_theta(winner))
        over fixed windows of the held-out items (fixed noise, so before/after are comparable)."""
        if not len(self.heldout_set):
            raise ValueError(f"{self.config.data}: no held-out items to measure the likelihood margin on")
        was_training = self.model.training
        self.model.eval()
        gen = torch.Generator().manual_seed(12345)
        margins, gaps = [], []
        w = self.layout.frames
        for index in range(len(self.heldout_set)):
            item = self.heldout_set[index]
            frames = item["avatar_motion"].shape[0]
            if frames < w:
                continue
            starts = np.linspace(0, frames - w, self.config.margin_windows).astype(int)
            batch = {k: torch.stack([item[k][s : s + w] for s in starts]).to(self.device) for k in SEQUENCE_KEYS}
            batch["reference"] = item["reference"].expand(len(starts), -1).to(self.device)
            batch["loser"] = torch.stack([self.heldout_losers[index][s : s + w] for s in starts]).to(self.device)
            batch = to_model_batch(batch, self.model.cfg)
            nw = draw_noise(self.layout, tuple(batch["avatar_motion"].shape), gen, 0.0, self.device)
            err_w, err_l = self._dpo_errors(self.model, batch, nw)
            ref_w, ref_l = self._dpo_errors(self.reference, batch, nw)
            margins.append(float(preference_margin(err_w, ref_w, err_l, ref_l).mean()))
            gaps.append(float((err_l - err_w).mean()))
        self.model.train(was_training)
        if not margins:
            raise ValueError(f"no held-out item has the {w} frames of a training window")
        return float(np.mean(margins)), float(np.mean(gaps))

    # -- persistence -------------------------------------------------------------------------
    def save(self) -> None:
        cfg = self.config
        info = {
            "stage": cfg.stage,
            "step": self.step,
            "space": self.train_set.header.space,
            "dataset": str(cfg.data),
            "window": self.layout.frames,
            "clean_block_prob": cfg.clean_block_prob,
            "clean_first_clip": cfg.clean_first_clip,
            "seed": cfg.seed,
        }
        save_flow_transformer(self.model, self.checkpoint_path, info)
        resume = cfg.out / "resume"
        resume.mkdir(exist_ok=True)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}, resume / "optimizer.pt"
        )
        state = {"step": self.step, "rng": self.rng.bit_generator.state, "stage": cfg.stage}
        (resume / "state.json").write_text(json.dumps(state))

    def load_resume(self) -> None:
        resume = self.config.out / "resume"
        if not (resume / "state.json").is_file():
            raise ValueError(f"--resume: {resume} has no saved state; train without --resume first")
        state = json.loads((resume / "state.json").read_text())
        if state["stage"] != self.config.stage:
            raise ValueError(f"--resume: {resume} holds stage {state['stage']}, not stage {self.config.stage}")
        model, _ = load_flow_transformer(self.checkpoint_path, self.device)
        self.model.load_state_dict(model.state_dict())
        saved = torch.load(resume / "optimizer.pt", map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["generator"].cpu())
        self.rng.bit_generator.state = state["rng"]
        self.step = state["step"]
        if self.curves_path.is_file():  # drop curve lines logged after the saved step
            lines = [
                ln for ln in self.curves_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.step
            ]
            self.curves_path.write_text("".join(ln + "\n" for ln in lines))

    # -- the loop ------------------------------------------------------------------------------
    def run(self, on_log: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
        cfg = self.config
        began = time.perf_counter()
        if cfg.resume:
            self.load_resume()
        elif self.curves_path.exists():
            self.curves_path.unlink()
        margin_before = gap_before = None
        if cfg.stage == 2:
            self.build_losers()
            if len(self.heldout_set):
                margin_before, gap_before = self.heldout_margin()
        first = last = None
        with self.curves_path.open("a") as curves:
            while self.step < cfg.steps:
                metrics = self.train_step()
                first = metrics["loss"] if first is None else first
                last = metrics["loss"]
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    record = {"step": self.step, **metrics, "time": round(time.perf_counter() - began, 3)}
                    curves.write(json.dumps(record) + "\n")
                    curves.flush()
                    if on_log:
                        on_log(self.step, metrics)
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save()
        self.save()
        result = TrainResult(
            self.step,
            float(last if last is not None else "nan"),
            float(first if first is not None else "nan"),
            self.checkpoint_path,
            self.curves_path,
            margin_before,
            None,
            gap_before,
            None,
        )
        if cfg.stage == 2 and len(self.heldout_set):
            result.margin_after, result.loser_gap_after = self.heldout_margin()
        result.seconds = time.perf_counter() - began
        (cfg.out / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        plot_curves(self.curves_path, cfg.out / "curves.png")
        return result


def _avatar_guidance(scale: float):
    from avatarforcing.engine.sampler import GuidanceScales

    return GuidanceScales(avatar=scale, user=1.0)


def plot_curves(curves: Path, png: Path) -> Path | None:
    """Loss curves as a PNG (skipped, returning None, when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(ln) for ln in curves.read_text().splitlines() if ln.strip()]
    if not records:
        return None
    keys = [k for k in ("loss", "fm_loss", "dpo_loss") if k in records[0]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot([r["step"] for r in records], [r[key] for r in records], label=key)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return png
