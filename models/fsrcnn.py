"""FSRCNN (Dong, Loy, Tang, ECCV 2016): a small classic CNN, trained by this project on CPU.

The published configuration d = 56, s = 12, m = 4: a 5x5 feature conv (d), a 1x1 shrink (s), m 3x3 mapping
convs (s), a 1x1 expand (d), each followed by a PReLU, then a 9x9 stride-s deconvolution to the HR image.
As in the paper the network sees the luma only: the RGB input in [0, 1] is converted to Y'CbCr (BT.601,
MATLAB's `rgb2ycbcr`, the same formula as the PSNR), Y goes through the network, and Cb/Cr are upscaled
bicubically; the output is RGB again. PSNR on Y therefore measures the network alone.

The deconvolution is held in its sub-pixel form (Shi et al., CVPR 2016: a stride-s transposed convolution
is an LR convolution with s^2 outputs followed by a pixel shuffle), a Conv2d whose LR kernel covers the 9x9
footprint at every phase (5x5 at x2/x3, 3x3 at x4). That form can express every 9x9 deconvolution
(`deconv_to_subpixel` converts one exactly) and is a Conv2d, which the quantization core wraps like any other
layer, so the last layer is quantized too and "the last Conv2d" of the scopes is the upsampler.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

DECONV_KERNEL = 9
DECONV_PADDING = 4
# Smallest odd LR kernel that holds every tap of the 9x9 stride-s deconvolution with padding 4.
SUBPIXEL_KERNEL = {2: 5, 3: 5, 4: 3}

# MATLAB rgb2ycbcr for RGB in [0, 1] (rows: Y, Cb, Cr), offsets 16/128/128 on the 0-255 scale.
YCBCR_MATRIX = torch.tensor([[65.481, 128.553, 24.966],
                             [-37.797, -74.203, 112.0],
                             [112.0, -93.786, -18.214]], dtype=torch.float64) / 255.0
YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64) / 255.0


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    matrix = YCBCR_MATRIX.to(x)
    return torch.einsum("ij,bjhw->bihw", matrix, x) + YCBCR_OFFSET.to(x).view(1, 3, 1, 1)


def ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    inverse = torch.linalg.inv(YCBCR_MATRIX).to(x)
    return torch.einsum("ij,bjhw->bihw", inverse, x - YCBCR_OFFSET.to(x).view(1, 3, 1, 1))


def conv_prelu(in_ch: int, out_ch: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.PReLU(out_ch, init=0.25))


class SubPixelDeconv(nn.Module):
    """The 9x9 stride-s deconvolution (padding 4, output padding s-1) as an LR conv + pixel shuffle."""

    def __init__(self, in_ch: int, scale: int, out_ch: int = 1):
        super().__init__()
        kernel = SUBPIXEL_KERNEL[scale]
        self.scale, self.out_ch = scale, out_ch
        self.conv = nn.Conv2d(in_ch, out_ch * scale * scale, kernel, padding=kernel // 2)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


@torch.no_grad()
def deconv_to_subpixel(deconv: nn.ConvTranspose2d, target: SubPixelDeconv) -> None:
    """Copy a ConvTranspose2d(C, c, 9, stride=s, padding=4, output_padding=s-1) into `target` exactly.

    Output pixel q*s + r takes LR pixel q + d with deconv tap r + 4 - d*s (PyTorch's transposed conv has
    out = in*s - padding + tap); the sub-pixel conv's tap t is d = t - K//2, and pixel shuffle puts output
    channel c*s^2 + ry*s + rx at phase (ry, rx)."""
    s, kernel = target.scale, target.conv.kernel_size[0]
    weight = torch.zeros_like(target.conv.weight)        # (c*s*s, C, K, K)
    for c in range(target.out_ch):
        for ry in range(s):
            for rx in range(s):
                channel = c * s * s + ry * s + rx
                for ty in range(kernel):
                    jy = ry + DECONV_PADDING - (ty - kernel // 2) * s
                    for tx in range(kernel):
                        jx = rx + DECONV_PADDING - (tx - kernel // 2) * s
                        if 0 <= jy < DECONV_KERNEL and 0 <= jx < DECONV_KERNEL:
                            weight[channel, :, ty, tx] = deconv.weight[:, c, jy, jx]
    target.conv.weight.copy_(weight)
    target.conv.bias.copy_(deconv.bias.repeat_interleave(s * s))


class FSRCNN(nn.Module):
    upsampler_weight_key = "deconv.conv.weight"

    def __init__(self, scale: int, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.scale = scale
        self.feature = conv_prelu(1, d, 5)
        self.shrink = conv_prelu(d, s, 1)
        self.mapping = nn.Sequential(*(conv_prelu(s, s, 3) for _ in range(m)))
        self.expand = conv_prelu(s, d, 1)
        self.deconv = SubPixelDeconv(d, scale)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper's initialisation: He-normal convolutions, N(0, 0.001) deconvolution, zero biases.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.deconv.conv.weight, 0.0, 0.001)

    def feature_modules(self) -> list[nn.Module]:
        return [self.shrink, *self.mapping, self.expand]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ycbcr = rgb_to_ycbcr(x)
        y = self.deconv(self.expand(self.mapping(self.shrink(self.feature(ycbcr[:, :1])))))
        chroma = F.interpolate(ycbcr[:, 1:], scale_factor=self.scale, mode="bicubic", align_corners=False)
        return ycbcr_to_rgb(torch.cat([y, chroma], dim=1))


@register_model("fsrcnn", scales=(2, 3, 4), quant_scopes=("ptq4sr",),
                description="FSRCNN (ECCV 2016, d=56 s=12 m=4, luma), project-trained on T91+BSD200 (CPU)")
def build_fsrcnn(scale: int) -> nn.Module:
    return FSRCNN(scale).eval()
