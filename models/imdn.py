"""IMDN (Hui et al., ACM MM 2019): information multi-distillation network.

Module names follow the official checkpoints (Zheng222/IMDN `checkpoints/IMDN_x{2,3,4}.pth`, saved from
DataParallel, so their keys carry a `module.` prefix that `models.checkpoint` strips). Input and output are RGB
in [0, 1] with no mean shift.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import register_model

LRELU_SLOPE = 0.05  # the official code's default negative slope, also inside the blocks


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1)


def channel_std(x: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial standard deviation (population), shape (B, C, 1, 1)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).pow(0.5)


class ContrastChannelAttention(nn.Module):
    """CCA layer: channel weights from (std + mean) of each channel through a 1x1 bottleneck and a sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            conv1x1(channels, channels // reduction), nn.ReLU(inplace=True),
            conv1x1(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(channel_std(x) + self.avg_pool(x))


class IMDModule(nn.Module):
    """Information multi-distillation block: three 3x3 convs each split off `distilled` channels, a fourth
    conv yields the last `distilled`; the concatenation goes through CCA, a 1x1 fusion conv and the skip."""

    def __init__(self, channels: int = 64, distillation_rate: float = 0.25):
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.c1 = conv3x3(channels, channels)
        self.c2 = conv3x3(self.remaining, channels)
        self.c3 = conv3x3(self.remaining, channels)
        self.c4 = conv3x3(self.remaining, self.distilled)
        self.act = nn.LeakyReLU(LRELU_SLOPE, inplace=True)
        self.c5 = conv1x1(self.distilled * 4, channels)
        self.cca = ContrastChannelAttention(self.distilled * 4)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.split(x, (self.distilled, self.remaining), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = self._split(self.act(self.c1(x)))
        d2, r2 = self._split(self.act(self.c2(r1)))
        d3, r3 = self._split(self.act(self.c3(r2)))
        d4 = self.c4(r3)
        return self.c5(self.cca(torch.cat([d1, d2, d3, d4], dim=1))) + x


class IMDN(nn.Module):
    upsampler_weight_key = "upsampler.0.weight"

    def __init__(self, scale: int, in_ch: int = 3, nf: int = 64, num_modules: int = 6):
        super().__init__()
        self.scale = scale
        self.fea_conv = conv3x3(in_ch, nf)
        self.num_modules = num_modules
        for i in range(1, num_modules + 1):  # IMDB1..IMDB6 as in the official checkpoints
            self.add_module(f"IMDB{i}", IMDModule(nf))
        self.c = nn.Sequential(conv1x1(nf * num_modules, nf), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.LR_conv = conv3x3(nf, nf)
        self.upsampler = nn.Sequential(conv3x3(nf, in_ch * scale * scale), nn.PixelShuffle(scale))

    def blocks(self) -> list[IMDModule]:
        return [getattr(self, f"IMDB{i}") for i in range(1, self.num_modules + 1)]

    def feature_modules(self) -> list[nn.Module]:
        return list(self.blocks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs, out = [], fea
        for block in self.blocks():
            out = block(out)
            outs.append(out)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)


@register_model("imdn", scales=(2, 3, 4), description="IMDN (ACM MM 2019), official Zheng222/IMDN weights",
                quant_scopes=("ptq4sr",))
def build_imdn(scale: int) -> nn.Module:
    return IMDN(scale).eval()


# ------------------------------------------------------------------------------------------------------------
# "imdn-ntire": the simplified IMDN of KAIR that the NTIRE 2022 efficient-SR challenge used as its baseline
# (`model_zoo/imdn_baseline.pth`, x4): 8 blocks without contrast attention, one long skip, keys `model.*`.

class SimplifiedIMDB(nn.Module):
    """IMDB without CCA: conv1..conv3 (conv + LReLU, as `convN.0`) each split off 16 channels, conv4 the last
    16, a 1x1 fusion conv, and the block skip."""

    def __init__(self, channels: int = 64, distillation_rate: float = 0.25):
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.conv1 = nn.Sequential(conv3x3(channels, channels), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.conv2 = nn.Sequential(conv3x3(self.remaining, channels), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.conv3 = nn.Sequential(conv3x3(self.remaining, channels), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.conv4 = conv3x3(self.remaining, self.distilled)
        self.conv1x1 = conv1x1(self.distilled * 4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        split = (self.distilled, self.remaining)
        d1, r1 = torch.split(self.conv1(x), split, dim=1)
        d2, r2 = torch.split(self.conv2(r1), split, dim=1)
        d3, r3 = torch.split(self.conv3(r2), split, dim=1)
        return x + self.conv1x1(torch.cat([d1, d2, d3, self.conv4(r3)], dim=1))


class LongSkip(nn.Module):
    """x + sub(x) (KAIR's ShortcutBlock; the checkpoint names the body `sub`)."""

    def __init__(self, sub: nn.Module):
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class IMDNBaseline(nn.Module):
    upsampler_weight_key = "model.2.weight"
    upsampler_prefix = "model.2."

    def __init__(self, scale: int = 4, nf: int = 64, num_blocks: int = 8):
        super().__init__()
        self.scale, self.num_blocks = scale, num_blocks
        body = [SimplifiedIMDB(nf) for _ in range(num_blocks)] + [conv3x3(nf, nf)]
        self.model = nn.Sequential(conv3x3(3, nf), LongSkip(nn.Sequential(*body)),
                                   conv3x3(nf, 3 * scale * scale), nn.PixelShuffle(scale))

    def feature_modules(self) -> list[nn.Module]:
        return list(self.model[1].sub[:self.num_blocks])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@register_model("imdn-ntire", scales=(4,), quant_scopes=("ptq4sr",),
                description="simplified IMDN (8 blocks, no CCA), NTIRE 2022 ESR baseline weights, x4 only")
def build_imdn_ntire(scale: int) -> nn.Module:
    return IMDNBaseline(scale).eval()
