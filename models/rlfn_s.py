"""rlfn-s: a small RLFN-style x2 network trained by this project on CPU, the demo's model (issue 27).

RLFN's topology (Kong et al., CVPRW 2022; `models/rlfn.py` holds the official x4 challenge network), smaller:
a 3x3 head conv, 4 residual local feature blocks of 32 channels (three 3x3 conv + LeakyReLU(0.05), a skip, a 1x1
conv and RLFN's light ESA with its sigmoid gate), a 3x3 body conv whose output is added to the head's features
(the global skip, in feature space), then a 3x3 conv to 3 * scale^2 channels and a pixel shuffle. 152,748
parameters at x2. Input and output RGB in [0, 1].

There is no image-level skip (a bicubic upscale added to the output), as in IMDN, RFDN and RLFN: the quantized
body carries the whole image, so low-bit PTQ hurts it the way it hurts those networks, and the methods separate.
The pilot that chose this design tried two candidates with a bicubic image skip, `build_skip_sr(...,
image_skip=True)` with RLFN blocks or EDSR-style residual blocks (`ResBlock`): they learned faster per CPU minute
but lost only 0.3-0.6 dB at W4A4 under MinMax and left the methods within 0.3 dB of each other
(models/weights/MODEL_CARD.md). They are kept here unregistered, so the pilot can be rerun.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model
from models.rlfn import RLFB

# The last conv starts this much smaller than PyTorch's default initialisation, so training starts calmly.
UPSAMPLER_INIT_GAIN = 0.1


def conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2)


class ResBlock(nn.Module):
    """EDSR's residual block without batch norm and residual scaling (a pilot candidate's block)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1, self.conv2 = conv(ch, ch, 3), conv(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class SkipSR(nn.Module):
    """head conv -> blocks -> body conv (+ head features) -> conv + pixel shuffle [+ bicubic(input)]."""
    upsampler_weight_key = "upsampler.0.weight"

    def __init__(self, scale: int, blocks: list[nn.Module], nf: int, image_skip: bool = False):
        super().__init__()
        self.scale, self.image_skip = scale, image_skip
        self.head = conv(3, nf, 3)
        self.blocks = nn.Sequential(*blocks)
        self.body_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))
        with torch.no_grad():
            self.upsampler[0].weight.mul_(UPSAMPLER_INIT_GAIN)
            self.upsampler[0].bias.zero_()

    def feature_modules(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.head(x)
        out = self.upsampler(self.body_conv(self.blocks(fea)) + fea)
        if not self.image_skip:
            return out
        return out + F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


def build_skip_sr(scale: int, block: str = "rlfb", nf: int = 32, num_blocks: int = 4,
                  image_skip: bool = False) -> SkipSR:
    """`block`: "rlfb" (RLFN's block, mid channels = nf) or "res" (EDSR-style; the pilot used 8 of them)."""
    if block == "rlfb":
        blocks = [RLFB(nf, nf) for _ in range(num_blocks)]
    elif block == "res":
        blocks = [ResBlock(nf) for _ in range(num_blocks)]
    else:
        raise ValueError(f"unknown block {block!r}; use 'rlfb' or 'res'")
    return SkipSR(scale, blocks, nf, image_skip)


@register_model("rlfn-s", scales=(2,), quant_scopes=("ptq4sr",),
                description="RLFN topology, 4 blocks of 32 channels (153 K parameters), project-trained x2 on "
                            "T91+BSD200 (CPU); the demo's model")
def build_rlfn_s(scale: int) -> nn.Module:
    return build_skip_sr(scale).eval()
