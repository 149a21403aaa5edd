"""RLFN (Kong et al., CVPRW 2022, winner of the NTIRE 2022 efficient-SR runtime track), x4.

Weights: team04's challenge submission `model_zoo/team04_rlfn.pth` (ofsoundof/NTIRE2022_ESR): the pruned
variant with 46 feature / 48 middle channels and 4 blocks; module names follow it. Input and output RGB in
[0, 1] (rescaled to the [0, 255] the weights were trained on inside `forward`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

LRELU_SLOPE = 0.05


def conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2)


class LightESA(nn.Module):
    """RLFN's enhanced spatial attention: RFDN's ESA without the conv_max/conv3_ stages and their ReLUs."""

    def __init__(self, esa_ch: int, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, esa_ch, 1)
        self.conv_f = nn.Conv2d(esa_ch, esa_ch, 1)
        self.conv2 = nn.Conv2d(esa_ch, esa_ch, 3, stride=2)
        self.conv3 = nn.Conv2d(esa_ch, esa_ch, 3, padding=1)
        self.conv4 = nn.Conv2d(esa_ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        low = self.conv3(F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3))
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(low + self.conv_f(reduced)))


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 conv + LReLU, a skip, a 1x1 conv and the ESA."""

    def __init__(self, ch: int, mid: int, esa_ch: int = 16):
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = conv(ch, mid, 3), conv(mid, mid, 3), conv(mid, ch, 3)
        self.c5 = conv(ch, ch, 1)
        self.esa = LightESA(esa_ch, ch)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.c3_r(self.act(self.c2_r(self.act(self.c1_r(x))))))
        return self.esa(self.c5(out + x))


class RLFN(nn.Module):
    upsampler_weight_key = "upsampler.0.weight"
    # The challenge weights were trained on pixel values in [0, 255] (NTIRE 2022 ESR test_demo: data_range 255);
    # the benchmark feeds [0, 1], so the network rescales at its ends.
    data_range = 255.0

    def __init__(self, scale: int = 4, nf: int = 46, mid: int = 48, num_blocks: int = 4):
        super().__init__()
        self.scale, self.num_blocks = scale, num_blocks
        self.fea_conv = conv(3, nf, 3)
        for i in range(1, num_blocks + 1):
            self.add_module(f"B{i}", RLFB(nf, mid))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def feature_modules(self) -> list[nn.Module]:
        return [getattr(self, f"B{i}") for i in range(1, self.num_blocks + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x * self.data_range)
        out = fea
        for block in self.feature_modules():
            out = block(out)
        return self.upsampler(self.LR_conv(out) + fea) / self.data_range


@register_model("rlfn", scales=(4,), quant_scopes=("ptq4sr",),
                description="RLFN (NTIRE 2022 ESR runtime winner, team04 pruned 4-block weights), x4 only")
def build_rlfn(scale: int) -> nn.Module:
    return RLFN(scale).eval()
