"""Motion autoencoder: LIA-style encoder and flow-warping StyleGAN2-style decoder.

`MotionAutoencoder` owns `enc` (appearance/motion encoder) and `dec` (synthesis); its parameter
names equal the official `motion_autoencoder.*` keys (spec Appendix A) without that prefix.

Typical use (inside `torch.inference_mode()`):
    mae.refresh_basis()                         # once, after loading weights
    identity = mae.encode_reference(ref)        # ref [1, 3, S, S] in [-1, 1]
    r_user = mae.encode_motion(user_frames)     # [N, 3, S, S] -> [N, 512]
    frames = mae.decode(latents, identity)      # [N, 512] -> [N, 3, S, S] (not clamped)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from avatarforcing.engine.config import ModelConfig
from avatarforcing.engine.official.stylegan_layers import (
    ConstantInput,
    ConvLayer,
    EqualConv2d,
    EqualLinear,
    ResBlock,
    StyledConv,
    ToFlow,
    ToRGB,
)

MOTION_DIM = 512  # width of motion latents / styles (hard-coded 512 officially)
FC_DEPTH = 4  # 512 -> 512 affine maps before the final 512 -> dim_m map


def channels_at(resolution: int) -> int:
    """Feature channels at a resolution (channel multiplier 1), shared by encoder and decoder."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return table[resolution]


def _log2(size: int) -> int:
    exponent = int(math.log2(size))
    if 2**exponent != size or size < 64:
        raise ValueError(f"image side must be a power of two >= 64, got {size}")
    return exponent


@dataclass
class ReferenceIdentity:
    """Everything the decoder and transformer need that is constant per portrait (batch 1)."""

    s_r: Tensor  # [1, 512] appearance code
    feats: list[Tensor]  # skip features coarse -> fine: [1, C[r], r, r] for r = 8, 16, ..., S
    r_s_lambda: Tensor  # [1, dim_m] motion coefficients of the reference
    r_s: Tensor  # [1, 512] reference motion (the transformer's identity condition)


class AppearanceNet(nn.Module):
    """`net_app`: image `[N, 3, S, S]` → code `[N, 512]` and skip features."""

    def __init__(self, size: int, dim: int = MOTION_DIM) -> None:
        super().__init__()
        convs: list[nn.Module] = [ConvLayer(3, channels_at(size), 1)]
        resolution = size
        while resolution > 4:
            convs.append(ResBlock(channels_at(resolution), channels_at(resolution // 2)))
            resolution //= 2
        convs.append(EqualConv2d(channels_at(4), dim, 4, padding=0, bias=False))
        self.convs = nn.ModuleList(convs)

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns `(s [N, 512], feats)`, feats coarse → fine at 8, 16, ..., S."""
        outputs = []
        x = image
        for conv in self.convs:
            x = conv(x)
            outputs.append(x)
        feats = outputs[-3::-1]  # drop the 1x1 and 4x4 maps, coarsest first
        return x.flatten(1), feats


class MotionEncoder(nn.Module):
    """`enc`: `net_app` plus `fc`, five stacked affine maps 512 → ... → dim_m (no activation)."""

    def __init__(self, size: int, dim_m: int, dim: int = MOTION_DIM) -> None:
        super().__init__()
        self.net_app = AppearanceNet(size, dim)
        self.fc = nn.Sequential(*[EqualLinear(dim, dim) for _ in range(FC_DEPTH)], EqualLinear(dim, dim_m))

    def forward(self, image: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """`[N, 3, S, S]` → `(s [N, 512], feats, λ [N, dim_m])`."""
        code, feats = self.net_app(image)
        return code, feats, self.fc(code)


class Direction(nn.Module):
    """Motion basis: `weight [512, dim_m]`; Q = reduced QR of `weight + 1e-8` (orthonormal columns).

    Q is cached in the non-persistent buffer `basis` together with the weight it was computed
    from (`basis_source`). `refresh()` recomputes it; `q()` also recomputes it lazily when the
    weight no longer equals that copy (any kind of in-place load), so a stale basis is never used
    and no QR runs per call. While tracing / exporting the cached basis is used as a constant.
    """

    def __init__(self, dim_m: int, dim: int = MOTION_DIM) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim_m))
        self.register_buffer("basis", torch.zeros(dim, dim_m), persistent=False)
        self.register_buffer("basis_source", torch.full((dim, dim_m), float("nan")), persistent=False)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute Q: float32 Householder QR (`torch.linalg.qr`, reduced) on the CPU, once."""
        weight = self.weight.detach()
        q, _ = torch.linalg.qr(weight.to("cpu", torch.float32) + 1e-8, mode="reduced")
        self.basis = q.to(weight.device, weight.dtype)
        self.basis_source = weight.clone()

    def is_stale(self) -> bool:
        """True if the weight changed since the basis was computed (or it never was)."""
        return not torch.equal(self.weight.detach(), self.basis_source)

    def q(self) -> Tensor:
        """Q `[512, dim_m]`."""
        exporting = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not exporting and self.is_stale():
            self.refresh()
        return self.basis

    def forward(self, coefficients: Tensor) -> Tensor:
        """`λ [N, dim_m]` → `λ · Qᵀ` `[N, 512]`."""
        return coefficients @ self.q().t()


class FlowSynthesis(nn.Module):
    """`dec`: styles `w [N, 512]` + reference skip features → image `[N, 3, S, S]`.

    The image is assembled only from warped encoder features; the StyleGAN path only predicts
    each level's flow and mask. `to_rgb1` exists for key compatibility and is never used.
    """

    def __init__(self, size: int, dim_m: int, style_dim: int = MOTION_DIM) -> None:
        super().__init__()
        levels = _log2(size) - 2  # resolutions 8 .. S
        self.direction = Direction(dim_m, style_dim)
        self.input = ConstantInput(channels_at(4))
        self.conv1 = StyledConv(channels_at(4), channels_at(4), 3, style_dim)
        self.to_rgb1 = ToRGB(channels_at(4), upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.to_flows = nn.ModuleList()
        for level in range(levels):
            resolution = 2 ** (level + 3)
            in_ch, out_ch = channels_at(resolution // 2), channels_at(resolution)
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_ch))
            self.to_flows.append(ToFlow(out_ch, style_dim, resolution))

    def forward(self, style: Tensor, feats: list[Tensor]) -> Tensor:
        """`style [N, 512]`, `feats` coarse → fine (batch 1 is broadcast) → `[N, 3, S, S]`."""
        if len(feats) != len(self.to_flows):
            raise ValueError(f"expected {len(self.to_flows)} skip features, got {len(feats)}")
        x = self.conv1(self.input(style.shape[0]), style)
        rgb = flow = None
        for level, (to_flow, to_rgb) in enumerate(zip(self.to_flows, self.to_rgbs)):
            x = self.convs[2 * level](x, style)
            x = self.convs[2 * level + 1](x, style)
            warped, x, flow = to_flow(x, style, feats[level], flow)
            rgb = to_rgb(warped, rgb)
        return rgb


class MotionAutoencoder(nn.Module):
    """The official `motion_autoencoder` (Generator): `enc` (reference and motion codes) and `dec` (frames)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.dim_w != MOTION_DIM:
            raise ValueError("the motion autoencoder needs dim_w == 512")
        self.size = cfg.input_size
        self.enc = MotionEncoder(cfg.input_size, cfg.dim_m, MOTION_DIM)
        self.dec = FlowSynthesis(cfg.input_size, cfg.dim_m, MOTION_DIM)

    def refresh_basis(self) -> None:
        """Recompute the motion basis Q once; call after loading weights (also done lazily)."""
        self.dec.direction.refresh()

    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"expected images [N, 3, {self.size}, {self.size}], got {tuple(images.shape)}")

    def encode_reference(self, image: Tensor) -> ReferenceIdentity:
        """Reference portrait `[1, 3, S, S]` in [-1, 1] → its `ReferenceIdentity`."""
        self._check_images(image)
        if image.shape[0] != 1:
            raise ValueError("encode_reference takes a single image (batch 1)")
        s_r, feats, r_s_lambda = self.enc(image)
        return ReferenceIdentity(s_r=s_r, feats=feats, r_s_lambda=r_s_lambda, r_s=self.dec.direction(r_s_lambda))

    def encode_motion(self, frames: Tensor) -> Tensor:
        """Frames `[N, 3, S, S]` in [-1, 1] → motion latents `r_d = fc(net_app(x).s) · Qᵀ` `[N, 512]`."""
        self._check_images(frames)
        code, _ = self.enc.net_app(frames)
        return self.dec.direction(self.enc.fc(code))

    def decode(self, latents: Tensor, identity: ReferenceIdentity) -> Tensor:
        """Motion latents `[N, 512]` → frames `[N, 3, S, S]` (≈[-1, 1], not clamped).

        Style `w = s_r + r` for every frame; the reference skip features are broadcast.
        """
        if latents.dim() != 2 or latents.shape[1] != MOTION_DIM:
            raise ValueError(f"expected latents [N, {MOTION_DIM}], got {tuple(latents.shape)}")
        return self.dec(identity.s_r + latents, identity.feats)
