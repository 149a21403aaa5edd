"""BSRN (Li et al., CVPRW 2022, NTIRE 2022 efficient-SR model-complexity track winner), x4.

Weights: team18's challenge submission `model_zoo/team18_bsrn.pth` (ofsoundof/NTIRE2022_ESR; state dict under
`params`): 48 channels, 5 blocks, blueprint-separable convolutions whose point-wise part is an `nn.Linear` on
channel-last features (as in the checkpoint). Input and output RGB in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)


class BSConvU(nn.Module):
    """Blueprint-separable conv: point-wise (Linear over channels) then depth-wise 3x3."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.pw = nn.Linear(in_ch, out_ch)
        self.dw = nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(channels_first(self.pw(channels_last(x))))


class ESA(nn.Module):
    """Enhanced spatial attention with BSConv stages and GELU (BSRN's variant of RFDN's ESA)."""

    def __init__(self, ch: int):
        super().__init__()
        f = ch // 4
        self.conv1 = nn.Linear(ch, f)
        self.conv_f = nn.Linear(f, f)
        self.conv_max = BSConvU(f, f)
        self.conv2 = nn.Conv2d(f, f, 3, stride=2)
        self.conv3 = BSConvU(f, f)
        self.conv3_ = BSConvU(f, f)
        self.conv4 = nn.Linear(f, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(channels_last(x))
        pooled = F.max_pool2d(self.conv2(channels_first(reduced)), kernel_size=7, stride=3)
        low = self.conv3_(F.gelu(self.conv3(F.gelu(self.conv_max(pooled)))))
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        mask = self.conv4(channels_last(low) + self.conv_f(reduced))
        return x * torch.sigmoid(channels_first(mask))


class ESDB(nn.Module):
    """Efficient separable distillation block (named RFDB in the challenge code): three (Linear distill,
    BSConv refine with skip) steps, a last BSConv, Linear fusion, ESA, learned channel weights `cw`,
    Linear output, block skip."""

    def __init__(self, ch: int):
        super().__init__()
        dc = ch // 2
        self.c1_d, self.c1_r = nn.Linear(ch, dc), BSConvU(ch, ch)
        self.c2_d, self.c2_r = nn.Linear(ch, dc), BSConvU(ch, ch)
        self.c3_d, self.c3_r = nn.Linear(ch, dc), BSConvU(ch, ch)
        self.c4 = BSConvU(ch, dc)
        self.act = nn.GELU()
        self.c5 = nn.Linear(dc * 4, ch)
        self.esa = ESA(ch)
        self.cw = nn.Parameter(torch.normal(mean=1.0, std=0.2, size=(1, ch)))
        self.conv_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distilled, r = [], x
        for c_d, c_r in ((self.c1_d, self.c1_r), (self.c2_d, self.c2_r), (self.c3_d, self.c3_r)):
            distilled.append(self.act(c_d(channels_last(r))))
            r = self.act(c_r(r) + r)
        distilled.append(channels_last(self.act(self.c4(r))))
        fused = self.esa(channels_first(self.c5(torch.cat(distilled, dim=3))))
        return channels_first(self.conv_out(channels_last(fused) * self.cw)) + x


class PixelShuffleDirect(nn.Module):
    def __init__(self, scale: int, ch: int, out_ch: int = 3):
        super().__init__()
        self.upsampleOneStep = nn.Sequential(nn.Conv2d(ch, out_ch * scale * scale, 3, padding=1),
                                             nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsampleOneStep(x)


class BSRN(nn.Module):
    upsampler_weight_key = "upsampler.upsampleOneStep.0.weight"

    def __init__(self, scale: int = 4, nf: int = 48, num_blocks: int = 5):
        super().__init__()
        self.scale, self.num_blocks = scale, num_blocks
        self.fea_conv = BSConvU(3 * 4, nf)  # the input is fed four times, concatenated on channels
        for i in range(1, num_blocks + 1):
            self.add_module(f"B{i}", ESDB(nf))
        self.c1 = nn.Linear(nf * num_blocks, nf)
        self.c2 = BSConvU(nf, nf)
        self.upsampler = PixelShuffleDirect(scale, nf)

    def feature_modules(self) -> list[nn.Module]:
        return [getattr(self, f"B{i}") for i in range(1, self.num_blocks + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(torch.cat([x, x, x, x], dim=1))
        outs, out = [], fea
        for block in self.feature_modules():
            out = block(out)
            outs.append(out)
        trunk = F.gelu(channels_first(self.c1(channels_last(torch.cat(outs, dim=1)))))
        return self.upsampler(self.c2(trunk) + fea)


@register_model("bsrn", scales=(4,), quant_scopes=("ptq4sr",),
                description="BSRN (NTIRE 2022 ESR complexity-track winner, team18 weights), x4 only")
def build_bsrn(scale: int) -> nn.Module:
    return BSRN(scale).eval()
