"""Diffusion forcing over a training window: block layout, per-block noise levels, noising.

A training window of W = K + n*M frames mirrors a streaming session: block 0 is the first clip
(K frames, one noise level, like `FirstClipStep`), blocks 1..n are streaming blocks of M frames
(like `BlockStep`). Every block draws its own noise level (diffusion forcing); with probability
`clean_prob` a streaming block is clean (sigma 0), which is what the cached history and the
context frames look like at inference. With `clean_first_clip` the first clip may be clean too
(and the window's last block never is): at inference the first streaming block's history is the
clean first clip, a case the default layout never trains.

Convention (must match `engine.sampler`): x_sigma = (1 - sigma) x0 + sigma * eps, velocity
target v = eps - x0, the network sees the raw timestep t = 1000 * sigma. sigma is drawn
uniformly from the scheduler's 1000-point grid `linspace(1, 0, 1000)` (shift 1, no extra
weighting; the grid point sigma = 0 is left to clean blocks), so the sampler's quantised
levels are exactly training levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.sampler import sigma_grid


@dataclass(frozen=True)
class BlockLayout:
    """Blocks of a W-frame window. starts/stops: frame ranges per block; block_of_frame [W]."""

    frames: int
    starts: tuple[int, ...]
    stops: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.starts)

    @property
    def block_of_frame(self) -> Tensor:
        """[W] int64: index of the block each frame belongs to."""
        out = torch.empty(self.frames, dtype=torch.long)
        for b, (lo, hi) in enumerate(zip(self.starts, self.stops)):
            out[lo:hi] = b
        return out


def block_layout(cfg: ModelConfig, frames: int) -> BlockLayout:
    """Layout of a window of `frames` = K + n*M frames (n >= 0); anything else is refused."""
    k, m = cfg.clip_frames, cfg.block_frames
    if frames < k or (frames - k) % m:
        options = ", ".join(str(k + i * m) for i in range(4))
        raise ValueError(
            f"a training window must be the first clip ({k} frames) plus whole {m}-frame blocks: "
            f"{frames} frames is not (try {options}, ...)"
        )
    starts = (0, *range(k, frames, m))
    stops = (*starts[1:], frames)
    return BlockLayout(frames, starts, stops)


def sample_block_sigmas(
    layout: BlockLayout,
    batch: int,
    generator: torch.Generator,
    clean_prob: float = 0.0,
    device: torch.device | str = "cpu",
    clean_first_clip: bool = False,
) -> Tensor:
    """sigma [batch, num_blocks] float32: independent levels per block from the 1000-point grid;
    streaming blocks (not the first clip) are set to 0 with probability `clean_prob`; with
    `clean_first_clip`, every block but the last (the first clip included) is."""
    sigmas, _ = sigma_grid(1000)
    index = torch.randint(0, len(sigmas) - 1, (batch, layout.num_blocks), generator=generator)  # grid without sigma 0
    out = sigmas[index]
    if clean_prob > 0 and layout.num_blocks > 1:
        clean = torch.rand(batch, layout.num_blocks, generator=generator) < clean_prob
        clean[:, -1 if clean_first_clip else 0] = False  # one block always carries the loss
        out = torch.where(clean, torch.zeros_like(out), out)
    return out.to(device)


def frame_values(per_block: Tensor, layout: BlockLayout) -> Tensor:
    """[B, num_blocks] -> [B, W]: each frame takes its block's value."""
    return per_block[:, layout.block_of_frame.to(per_block.device)]


def add_noise(x0: Tensor, noise: Tensor, sigma_frames: Tensor) -> Tensor:
    """x_sigma = (1 - sigma) x0 + sigma eps; x0, noise [B, W, D], sigma_frames [B, W]."""
    s = sigma_frames[..., None]
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """v = eps - x0 (what the sampler's Euler step x + (sigma' - sigma) v integrates)."""
    return noise - x0
