"""StyleGAN2-style building blocks of the motion autoencoder.

Everything is plain torch (padding, grouped / transposed convolutions, grid_sample), so the
modules run on any device and trace to ONNX. Submodule and parameter names follow the official
attribute paths (spec Appendix A), e.g. `ConvLayer` is an `nn.Sequential` whose indices are
`0` = blur / conv, `1` = conv / activation, `2` = activation.

Images and feature maps are `[N, C, H, W]`; styles are `[N, style_dim]`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2.0)
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(gain: float = 1.0) -> Tensor:
    """K4 = outer([1,3,3,1], [1,3,3,1]) / 64 · gain, `[4, 4]` float32 (sums to `gain`)."""
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum() * gain


def _crop_or_pad(x: Tensor, before: int, after: int, dim: int) -> Tensor:
    """Zero-pad (positive) or crop (negative) `dim` of `x` by `before` / `after` samples."""
    if before < 0:
        x = x.narrow(dim, -before, x.shape[dim] + before)
        before = 0
    if after < 0:
        x = x.narrow(dim, 0, x.shape[dim] + after)
        after = 0
    if before or after:
        pads = [0, 0] * (x.dim() - 1 - dim) + [before, after]
        x = F.pad(x, pads)
    return x


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """1×1 convolution as a matmul (much faster than conv2d on CPU for few in/out channels).

    `x [N, in, H, W]`, `weight [out, in]`, `bias [out]` → `[N, out, H, W]`.
    """
    n, _, h, w = x.shape
    y = torch.matmul(weight, x.flatten(2))
    if bias is not None:
        y = y + bias[:, None]
    return y.view(n, weight.shape[0], h, w)


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample, FIR-filter, downsample every channel of `x` `[N, C, H, W]` (StyleGAN2's upfirdn2d).

    Per channel and both axes: insert `up - 1` zeros after every sample, pad `pad[0]` before
    and `pad[1]` after, convolve with `kernel` `[kh, kw]` (true convolution), keep every
    `down`-th sample. Output side: `(H·up + p0 + p1 − kh) // down + 1`.

    `up > 1` runs as a grouped transposed convolution (no multiplications with the inserted
    zeros); `up == 1` as padding plus a grouped strided convolution.
    """
    channels = int(x.shape[1])  # a constant per layer (keeps the kernel shape static when traced)
    kh, kw = kernel.shape
    weight = kernel.to(x.dtype)[None, None].expand(channels, 1, kh, kw)
    p0, p1 = pad
    if up == 1:
        if p0 == p1 >= 0:  # symmetric zero padding: let the convolution do it
            return F.conv2d(x, weight.flip([2, 3]), stride=down, padding=p0, groups=channels)
        x = _crop_or_pad(_crop_or_pad(x, p0, p1, 2), p0, p1, 3)
        return F.conv2d(x, weight.flip([2, 3]), stride=down, groups=channels)
    # conv_transpose2d(x, k, stride=up)[o] = Σ_a x[a]·k[o − up·a]: the full convolution of the
    # zero-stuffed signal with k; shift it by kh − 1 − p0 and cut it to the padded length.
    full = F.conv_transpose2d(x, weight, stride=up, groups=channels)
    height, width = x.shape[2] * up + p0 + p1 - kh + 1, x.shape[3] * up + p0 + p1 - kw + 1
    shift_h, shift_w = kh - 1 - p0, kw - 1 - p0
    y = _crop_or_pad(full, -shift_h, height + shift_h - full.shape[2], 2)
    y = _crop_or_pad(y, -shift_w, width + shift_w - full.shape[3], 3)
    return y[:, :, ::down, ::down] if down > 1 else y


class Blur(nn.Module):
    """FIR blur with the K4 kernel (times `gain`), padding `pad`; buffer `kernel [4,4]`."""

    def __init__(self, pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.pad = pad
        self.register_buffer("kernel", blur_kernel(gain))

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR upsampling of skip maps: `upfirdn2d(x, K4·4, up=2, pad=(2,1))`, `H → 2H`."""

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", blur_kernel(factor**2))
        excess = self.kernel.shape[0] - factor
        self.pad = ((excess + 1) // 2 + factor - 1, excess // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class EqualLinear(nn.Module):
    """`y = x · (W/√in)ᵀ + b`; parameters `weight [out, in]`, `bias [out]`."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = 1.0 / math.sqrt(in_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualConv2d(nn.Module):
    """Convolution with weight `W · 1/√(in·k²)`; `weight [out, in, k, k]`, optional `bias [out]`."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.scale
        if weight.shape[2:] == (1, 1) and self.stride == 1 and self.padding == 0:
            return conv1x1(x, weight.flatten(1), self.bias)
        return F.conv2d(x, weight, self.bias, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    """`y = leaky_relu(x + b, 0.2) · √2`; `bias [1, C, 1, 1]`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x + self.bias, LEAKY_SLOPE) * LEAKY_GAIN


class ConvLayer(nn.Sequential):
    """[Blur] → EqualConv2d → [FusedLeakyReLU] (StyleGAN2's `ConvLayer`).

    With `downsample` the output side is half the input side (blur, then stride-2 conv with
    no padding); otherwise 'same' padding. The conv carries a bias only when `bias and not
    activate`; with `activate` the activation carries it.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        downsample: bool = False,
        activate: bool = True,
        bias: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        if downsample:
            excess = (len(BLUR_TAPS) - 2) + (kernel_size - 1)
            layers.append(Blur(((excess + 1) // 2, excess // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_ch, out_ch, kernel_size, stride, padding, bias=bias and not activate))
        if activate:
            if not bias:
                raise ValueError("an activated ConvLayer always carries its bias in the activation")
            layers.append(FusedLeakyReLU(out_ch))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """`(conv2(conv1(x)) + skip(x)) / √2`, `[N, in, H, W] → [N, out, H/2, W/2]`."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_ch, in_ch, 3)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, downsample=True)
        self.skip = ConvLayer(in_ch, out_ch, 1, downsample=True, activate=False, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2.0)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution, computed as "scale input, shared conv, scale output".

    For style `w_n`: `s = modulation(w_n) [in]`; effective weight `W·s/√(in·k²)`, demodulated per
    output channel by `1/sqrt(Σ W_n² + 1e-8)`. Since the modulation is per input channel and the
    demodulation per output channel, the batch shares one convolution (no per-sample weights,
    no grouped conv). Parameters `weight [1, out, in, k, k]`, `modulation.{weight,bias}`;
    upsampling adds `blur.kernel`. Upsampling: stride-2 transposed conv (`2H+1`), then blur → `2H`.
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, demodulate: bool = True, upsample: bool = False
    ) -> None:
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        if upsample:
            factor = 2
            excess = (len(BLUR_TAPS) - factor) - (kernel_size - 1)
            self.blur = Blur(((excess + 1) // 2 + factor - 1, excess // 2 + 1), gain=factor**2)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """`x [N or 1, in, H, W]`, `style [N, style_dim]` → `[N, out, H', W']`."""
        s = self.modulation(style)  # [N, in]
        weight = self.weight[0] * self.scale  # [out, in, k, k]
        x = x * s[:, :, None, None]
        if self.upsample:
            y = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        elif self.kernel_size == 1:
            y = conv1x1(x, weight.flatten(1))
        else:
            y = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            energy = torch.mm(s * s, weight.pow(2).sum(dim=(2, 3)).t())  # [N, out]
            y = y * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        if self.upsample:
            y = self.blur(y)
        return y


class NoiseInjection(nn.Module):
    """Kept for key compatibility (`weight [1]`); noise is never supplied, so it is the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x


class StyledConv(nn.Module):
    """ModulatedConv2d(demodulate) → NoiseInjection (identity) → FusedLeakyReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, upsample: bool = False) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, demodulate=True, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, style)))


class ToRGB(nn.Module):
    """`conv(x) + bias (+ Upsample(skip))`, `[N, C, H, W] → [N, 3, H, W]`.

    `conv` is ConvLayer(C→3, 1×1) including its LeakyReLU·√2 (an official quirk: the RGB output keeps the activation).
    """

    def __init__(self, channels: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ConvLayer(channels, 3, 1)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def identity_grid(resolution: int) -> Tensor:
    """`[1, R, R, 2]` sampling grid with grid[i, j] = (x_j, y_i), x = y = linspace(−1, 1, R).

    Built in float64 with numpy, like the official code, then rounded to float32.
    """
    axis = np.linspace(-1.0, 1.0, resolution)
    xs, ys = np.meshgrid(axis, axis)
    return torch.from_numpy(np.stack([xs, ys], axis=-1)[None].astype(np.float32))


class ToFlow(nn.Module):
    """Predicts a flow field and mask and warps an encoder feature map (the official `ToFlow`).

    `o = conv(x, w) + bias (+ Upsample(skip))` (3 channels); grid = identity + tanh(o[:, :2]);
    `warped = grid_sample(feat, grid, bilinear, zeros, align_corners=False) · sigmoid(o[:, 2:3])`.
    The identity grid of the level's `resolution` is a non-persistent buffer.
    """

    def __init__(self, channels: int, style_dim: int, resolution: int, upsample: bool = True) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.register_buffer("grid", identity_grid(resolution), persistent=False)

    def forward(
        self, x: Tensor, style: Tensor, feat: Tensor, skip: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`x [N, C, R, R]`, `style [N, D]`, `feat [1 or N, C, R, R]`, `skip [N, 3, R/2, R/2]`.

        Returns `(warped, warped + x·(1 − mask), o)`; `o [N, 3, R, R]` is the next level's skip.
        """
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        batch = out.shape[0]
        grid = self.grid.to(out.dtype) + torch.tanh(out[:, 0:2]).permute(0, 2, 3, 1)
        mask = torch.sigmoid(out[:, 2:3])
        source = feat.expand(batch, -1, -1, -1) if feat.shape[0] != batch else feat
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False) * mask
        return warped, warped + x * (1 - mask), out


class ConstantInput(nn.Module):
    """Learned constant `input [1, C, size, size]`; `forward(batch)` broadcasts it (no copy)."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.expand(batch, -1, -1, -1)
