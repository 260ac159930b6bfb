"""Losses: flow matching (stage 1) and Diffusion-DPO on velocity errors (stage 2).

Errors are mean squared velocity errors over the frames that carry noise (weight 1) and the
motion dims; clean frames (sigma 0, history) carry no loss. The flow-matching loss can weight
each frame's and dim's squared error (a dataset's `loss_weight`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def per_sample_error(v_pred: Tensor, v_target: Tensor, frame_weight: Tensor) -> Tensor:
    """Mean squared error per sample: v [B, W, D], frame_weight [B, W] (0/1) -> [B] float32."""
    sq = (v_pred.float() - v_target.float()).pow(2).mean(dim=-1)
    w = frame_weight.float()
    return (sq * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def flow_matching_loss(
    v_pred: Tensor, v_target: Tensor, frame_weight: Tensor, error_weight: Tensor | None = None
) -> Tensor:
    """Stage-1 loss: mean squared velocity error over all weighted frames of the batch.
    error_weight [B, W, D] (optional, >= 0) scales each squared error before the mean over the
    dims; the normalisation stays the count of noisy frames, so weights above 1 add emphasis."""
    sq = (v_pred.float() - v_target.float()).pow(2)
    if error_weight is not None:
        sq = sq * error_weight.float()
    sq = sq.mean(dim=-1)
    w = frame_weight.float()
    return (sq * w).sum() / w.sum().clamp_min(1.0)


def preference_margin(err_w_theta: Tensor, err_w_ref: Tensor, err_l_theta: Tensor, err_l_ref: Tensor) -> Tensor:
    """[B]: (err_theta(l) - err_ref(l)) - (err_theta(w) - err_ref(w)).

    Positive = relative to the reference, the model fits winners better and losers worse,
    i.e. it assigns the winners (ground truth) a larger likelihood margin. 0 when theta = ref."""
    return (err_l_theta - err_l_ref) - (err_w_theta - err_w_ref)


def diffusion_dpo_loss(
    err_w_theta: Tensor, err_w_ref: Tensor, err_l_theta: Tensor, err_l_ref: Tensor, beta: float
) -> Tensor:
    """Diffusion-DPO: -log sigmoid(-beta/2 * ((e_w,theta - e_w,ref) - (e_l,theta - e_l,ref))), batch mean.

    Equals -log sigmoid(beta/2 * preference_margin): log 2 at theta = ref, falling as the
    model prefers winners (all errors on the same noise and timesteps)."""
    margin = preference_margin(err_w_theta, err_w_ref, err_l_theta, err_l_ref)
    return -F.logsigmoid(0.5 * beta * margin).mean()


def dpo_loss_reference_value() -> float:
    """The loss at theta = ref (margin 0): log 2."""
    return float(torch.log(torch.tensor(2.0)))
