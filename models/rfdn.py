"""RFDN (Liu et al., ECCVW 2020, winner of the AIM 2020 efficient-SR challenge), x4, nf = 50, 4 blocks.

Weights: the NTIRE 2022 efficient-SR challenge's `model_zoo/rfdn_baseline.pth` (ofsoundof/NTIRE2022_ESR);
module names follow it. Input and output RGB in [0, 1] (rescaled to the
[0, 255] the weights were trained on inside `forward`), no mean shift.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

LRELU_SLOPE = 0.05


def conv(in_ch: int, out_ch: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, k, padding=k // 2)


class ESA(nn.Module):
    """Enhanced spatial attention: a strided, max-pooled, low-resolution branch produces a sigmoid mask
    at full resolution."""

    def __init__(self, ch: int):
        super().__init__()
        f = ch // 4
        self.conv1 = nn.Conv2d(ch, f, 1)
        self.conv_f = nn.Conv2d(f, f, 1)
        self.conv_max = nn.Conv2d(f, f, 3, padding=1)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv3 = nn.Conv2d(f, f, 3, padding=1)
        self.conv3_ = nn.Conv2d(f, f, 3, padding=1)
        self.conv4 = nn.Conv2d(f, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        pooled = F.max_pool2d(self.conv2(reduced), kernel_size=7, stride=3)
        low = self.conv3_(F.relu(self.conv3(F.relu(self.conv_max(pooled)))))
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(low + self.conv_f(reduced)))


class RFDB(nn.Module):
    """Residual feature distillation block: three (1x1 distill, 3x3 shallow-residual refine) steps, a last
    3x3, concatenation of the four distilled parts, 1x1 fusion, ESA."""

    def __init__(self, ch: int):
        super().__init__()
        dc = ch // 2
        self.c1_d, self.c1_r = conv(ch, dc, 1), conv(ch, ch, 3)
        self.c2_d, self.c2_r = conv(ch, dc, 1), conv(ch, ch, 3)
        self.c3_d, self.c3_r = conv(ch, dc, 1), conv(ch, ch, 3)
        self.c4 = conv(ch, dc, 3)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        self.c5 = conv(dc * 4, ch, 1)
        self.esa = ESA(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled, r = [], x
        for c_d, c_r in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            distilled.append(self.act(c_d(r)))
            r = self.act(c_r(r) + r)
        distilled.append(self.act(self.c4(r)))
        return self.esa(self.c5(torch.cat(distilled, dim=1)))


class RFDN(nn.Module):
    upsampler_weight_key = "upsampler.0.weight"
    # The challenge weights were trained on pixel values in [0, 255] (NTIRE 2022 ESR test_demo: data_range 255);
    # the benchmark feeds [0, 1], so the network rescales at its ends.
    data_range = 255.0

    def __init__(self, scale: int = 4, nf: int = 50, num_modules: int = 4):
        super().__init__()
        self.scale, self.num_modules = scale, num_modules
        self.fea_conv = conv(3, nf, 3)
        for i in range(1, num_modules + 1):
            self.add_module(f"B{i}", RFDB(nf))
        self.c = nn.Sequential(conv(nf * num_modules, nf, 1), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.LR_conv = conv(nf, nf, 3)
        self.upsampler = nn.Sequential(conv(nf, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def feature_modules(self) -> list[nn.Module]:
        return [getattr(self, f"B{i}") for i in range(1, self.num_modules + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x * self.data_range)
        outs, out = [], fea
        for block in self.feature_modules():
            out = block(out)
            outs.append(out)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea) / self.data_range


@register_model("rfdn", scales=(4,), quant_scopes=("ptq4sr",),
                description="RFDN (AIM 2020 efficient SR winner), NTIRE 2022 ESR baseline weights, x4 only")
def build_rfdn(scale: int) -> nn.Module:
    return RFDN(scale).eval()
