"""Flow-matching Euler sampler with 3-way classifier-free guidance, apart from the model.

Convention: x_sigma = (1 - sigma) x0 + sigma * eps, velocity v = eps - x0. The official schedule
evaluates the network at t in linspace(1000, 0, nfe - 1); sigma(t) is looked up on a 1000-point
grid (quantised, first minimum wins) and the update is an Euler step on that grid. The last
evaluation (t = 0) cannot change x and is dropped here (bit-exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


def sigma_grid(num_train_timesteps: int = 1000) -> tuple[Tensor, Tensor]:
    """(sigmas, timesteps) of the scheduler: linspace(1, 0, N) and sigmas * N, float32."""
    sigmas = torch.linspace(1.0, 0.0, num_train_timesteps, dtype=torch.float32)
    return sigmas, sigmas * num_train_timesteps


def lookup_sigma(t: float, num_train_timesteps: int = 1000) -> float:
    """sigma(t) on the quantised grid; 0 at t == 0 (float32 value as a Python float)."""
    if t == 0:
        return 0.0
    sigmas, timesteps = sigma_grid(num_train_timesteps)
    k = int(torch.argmin((timesteps - torch.tensor(t, dtype=torch.float32)).abs()))
    return float(sigmas[k])


@dataclass(frozen=True)
class GuidanceScales:
    """v = v_null + avatar * (v_A - v_null) + user * (v_U - v_null)."""

    avatar: float = 2.0
    user: float = 1.0

    def as_tensor(self) -> Tensor:
        return torch.tensor([self.avatar, self.user], dtype=torch.float32)


def combine_guidance(v3: Tensor, scales: Tensor) -> Tensor:
    """v3 [3B, L, D] in branch order [null, A, U], scales [2] (avatar, user) -> [B, L, D]."""
    v_null, v_avatar, v_user = v3.chunk(3)
    return v_null + scales[0] * (v_avatar - v_null) + scales[1] * (v_user - v_null)


@dataclass(frozen=True)
class FlowMatchingEulerSampler:
    """Timesteps and sigma steps of the official sampler for a given nfe."""

    nfe: int = 10
    num_train_timesteps: int = 1000
    timesteps: tuple[float, ...] = field(init=False)
    sigmas: tuple[float, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.nfe < 3:
            raise ValueError(f"nfe must be >= 3 (nfe - 1 evaluations ending at t = 0), got {self.nfe}")
        ts = torch.from_numpy(np.linspace(self.num_train_timesteps, 0, self.nfe - 1)).to(torch.float32)
        object.__setattr__(self, "timesteps", tuple(float(t) for t in ts))
        object.__setattr__(self, "sigmas", tuple(lookup_sigma(t, self.num_train_timesteps) for t in self.timesteps))

    @property
    def evaluation_timesteps(self) -> tuple[float, ...]:
        """Timesteps the network is evaluated at (the final no-op t = 0 dropped)."""
        return self.timesteps[:-1]

    @property
    def sigma_steps(self) -> tuple[float, ...]:
        """sigma(t_{i+1}) - sigma(t_i) for every evaluation i."""
        return tuple(b - a for a, b in zip(self.sigmas[:-1], self.sigmas[1:]))

    def step(self, x: Tensor, velocity: Tensor, index: int) -> Tensor:
        """Euler update of evaluation `index`: x + (sigma_{i+1} - sigma_i) * v."""
        return x + self.sigma_steps[index] * velocity
