"""CARN-M (Ahn et al., ECCV 2018): cascading residual network, mobile variant with group convolutions.

The official checkpoint (nmhkahn/CARN-pytorch `checkpoint/carn_m.pth`) is ONE multi-scale network with an
upsampler per scale (`upsample.up2/up3/up4`). `create_model("carn-m", s)` builds the shared body plus the x`s`
upsampler only, so that its forward is `forward(x)` at scale s and every module it holds is used (a quantizer
on an unused branch would never see calibration data); loading ignores the other scales' upsamplers
(`unused_checkpoint_prefixes`). Input/output RGB in [0, 1]; the mean shift is part of the network.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.registry import register_model

RGB_MEAN = (0.4488, 0.4371, 0.4040)
SCALES = (2, 3, 4)
GROUPS = 4  # CARN-M's group convolutions in the residual and upsampling blocks
NF = 64


class MeanShift(nn.Module):
    """Fixed per-channel affine map stored as `shifter.weight` (3x3 identity) / `shifter.bias` (±mean).

    Buffers, not a Conv2d: it is frozen preprocessing, so it must neither count as a parameter nor be picked up
    as the network's first/last convolution by quantization scopes."""

    def __init__(self, sign: float):
        super().__init__()
        self.shifter = nn.Module()
        self.shifter.register_buffer("weight", torch.eye(3).view(3, 3, 1, 1))
        self.shifter.register_buffer("bias", sign * torch.tensor(RGB_MEAN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.shifter.weight, self.shifter.bias)


class ConvReLU(nn.Module):
    """`body = [conv, ReLU]` (the official BasicBlock; here always a 1x1 fusion conv)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class EfficientResidualBlock(nn.Module):
    """group 3x3 -> ReLU -> group 3x3 -> ReLU -> 1x1, plus the input, then ReLU."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
            nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


def cascade(x: torch.Tensor, units: list[nn.Module], fusions: list[nn.Module]) -> torch.Tensor:
    """CARN's cascading connections: each unit's output is concatenated to everything before it and fused
    by a 1x1 conv, which feeds the next unit."""
    concat, out = x, x
    for unit, fuse in zip(units, fusions):
        concat = torch.cat([concat, unit(out)], dim=1)
        out = fuse(concat)
    return out


class CascadingBlock(nn.Module):
    """Local cascade: the SAME efficient residual block (`b1`, shared weights) applied three times."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.b1 = EfficientResidualBlock(ch, groups)
        self.c1, self.c2, self.c3 = ConvReLU(2 * ch, ch), ConvReLU(3 * ch, ch), ConvReLU(4 * ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cascade(x, [self.b1] * 3, [self.c1, self.c2, self.c3])


class UpsampleStages(nn.Module):
    """body = [group conv ch -> r^2 ch, ReLU, PixelShuffle(r)], once (r = scale) for x2/x3, twice (r = 2) for x4."""

    def __init__(self, scale: int, ch: int, groups: int):
        super().__init__()
        layers: list[nn.Module] = []
        for r in {2: [2], 3: [3], 4: [2, 2]}[scale]:
            layers += [nn.Conv2d(ch, r * r * ch, 3, padding=1, groups=groups), nn.ReLU(inplace=True),
                       nn.PixelShuffle(r)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsampler(nn.Module):
    """Holds only `up<scale>`, named as in the multi-scale checkpoint."""

    def __init__(self, scale: int, ch: int, groups: int):
        super().__init__()
        self.add_module(f"up{scale}", UpsampleStages(scale, ch, groups))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"up{self.scale}")(x)


class CARNM(nn.Module):
    def __init__(self, scale: int, groups: int = GROUPS):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"CARN-M has upsamplers for x2/x3/x4, not x{scale}")
        self.scale = scale
        self.unused_checkpoint_prefixes = tuple(f"upsample.up{s}." for s in SCALES if s != scale)
        self.sub_mean = MeanShift(-1.0)
        self.add_mean = MeanShift(+1.0)
        self.entry = nn.Conv2d(3, NF, 3, padding=1)
        self.b1, self.b2, self.b3 = (CascadingBlock(NF, groups) for _ in range(3))
        self.c1, self.c2, self.c3 = ConvReLU(2 * NF, NF), ConvReLU(3 * NF, NF), ConvReLU(4 * NF, NF)
        self.upsample = Upsampler(scale, NF, groups)
        self.exit = nn.Conv2d(NF, 3, 3, padding=1)

    def feature_modules(self) -> list[nn.Module]:
        return [self.b1, self.b2, self.b3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.entry(self.sub_mean(x))
        body = cascade(feat, [self.b1, self.b2, self.b3], [self.c1, self.c2, self.c3])
        return self.add_mean(self.exit(self.upsample(body)))


@register_model("carn-m", scales=SCALES, multi_scale=True, quant_scopes=("ptq4sr",),
                description="CARN-M (ECCV 2018), one multi-scale network, official nmhkahn/CARN-pytorch weights")
def build_carn_m(scale: int) -> nn.Module:
    return CARNM(scale).eval()
