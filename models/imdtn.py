"""IMDTN (NTIRE 2022 efficient-SR challenge, team ZLZ, `team09_imdtn`): an IMDN whose blocks end in Swin
transformer blocks, x4.

Weights: the challenge submission `model_zoo/team09_imdtn.pth` (ofsoundof/NTIRE2022_ESR), a plain state dict;
module names follow it (`fea_conv`, `IMDTB{1,2,3}.{c1..c4}`, `IMDTB{i}.transformer.residual_group.blocks.{0,1}.*`,
`c.0`, `LR_conv`, `upsampler.0`). Input and output RGB in [0, 1] (the challenge's data_range 1.0 for team 09).

Architecture (written from the challenge code's behaviour, reusing this project's SwinIR blocks):
  * fea_conv 3x3 -> three IMDT blocks -> concat -> 1x1 conv + LReLU (`c`) -> LR_conv 3x3 + long skip ->
    3x3 conv + PixelShuffle(4);
  * an IMDT block: c1..c3 are 3x3 convs with 4 groups, each with a residual to its input, followed by a
    channel shuffle (4 groups) and LReLU(0.05); 16 channels are split off after each, c4 (3x3, no groups) makes
    the last 16; the 64 distilled channels go through a Swin stage (2 blocks, window 6, 2 heads, MLP ratio 2,
    no conv, with its own residual) and the block adds its input. The LReLU of the challenge code is in place,
    so the residual of c2 and c3 adds the *activated* shuffled tensor: reproduced here explicitly.
  * The Swin blocks are `models.swinir.BasicLayer`: fused `attn.qkv`, `attn.proj`, `mlp.fc1`/`mlp.fc2` and the
    two batch matmuls as `models.layers.MatMul` (`attn.matmul_qk`, `attn.matmul_av`), so the `2dquant` scope
    covers them exactly as on SwinIR.
  * Padding: the network pads itself as the challenge code does, with mirrored rows/columns up to the *next*
    multiple of 6 strictly above each side (1 to 6 rows, even when the side already is a multiple of 6), and crops
    the output. An outer pad to a multiple (`pad_multiple`) would change the result on sides divisible by 6, so
    the model does not ask for one (`pad_multiple = 1`).
  * The checkpoint stores the shift masks (`attn_mask`, for a 48x48 input) and `relative_position_index`: they are
    derived from the configuration and the input size, so they are dropped on load and recomputed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import register_model
from models.swinir import BasicLayer, map_to_tokens, tokens_to_map

LRELU_SLOPE = 0.05
WINDOW = 6
GROUPS = 4  # groups of c1..c3 and of the channel shuffle after them


def conv3x3(in_ch: int, out_ch: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=groups)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, g*c, H, W) -> channel order c-major: channel j*g + i of the output is channel i*c + j of the input."""
    b, ch, h, w = x.shape
    return x.view(b, groups, ch // groups, h, w).transpose(1, 2).reshape(b, ch, h, w)


def pad_past_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Append mirrored rows/columns (bottom/right) up to the next multiple of `multiple` strictly above each side,
    as the challenge code does: h -> (h // multiple + 1) * multiple."""
    for dim in (2, 3):
        size = x.shape[dim]
        target = (size // multiple + 1) * multiple
        while x.shape[dim] < target:  # one mirror suffices unless the image is smaller than the padding
            x = torch.cat([x, torch.flip(x, [dim])], dim)
        x = x.narrow(dim, 0, target)
    return x


class SwinResidual(nn.Module):
    """A Swin stage on a feature map, plus its input: map -> tokens -> `residual_group` -> map, + x."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio, [0.0] * depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        return tokens_to_map(self.residual_group(map_to_tokens(x), size), size) + x


class IMDTBlock(nn.Module):
    """Information multi-distillation with grouped residual convs, then a Swin stage on the distilled channels."""

    def __init__(self, channels: int = 64, distillation_rate: float = 0.25, window_size: int = WINDOW,
                 num_heads: int = 2, depth: int = 2, mlp_ratio: float = 2.0):
        super().__init__()
        self.distilled = int(channels * distillation_rate)
        self.remaining = channels - self.distilled
        self.c1 = conv3x3(channels, channels, GROUPS)
        self.c2 = conv3x3(self.remaining, channels, GROUPS)
        self.c3 = conv3x3(self.remaining, channels, GROUPS)
        self.c4 = conv3x3(self.remaining, self.distilled)
        self.act = nn.LeakyReLU(LRELU_SLOPE)
        self.transformer = SwinResidual(self.distilled * 4, depth, num_heads, window_size, mlp_ratio)

    def _stage(self, conv: nn.Conv2d, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # conv + residual, shuffle, LReLU; the activated tensor is also the next stage's residual
        return self.act(channel_shuffle(conv(inp) + skip, GROUPS))

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.split(x, (self.distilled, self.remaining), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self._stage(self.c1, x, x)
        d1, r1 = self._split(s1)
        s2 = self._stage(self.c2, r1, s1)
        d2, r2 = self._split(s2)
        d3, r3 = self._split(self._stage(self.c3, r2, s2))
        return self.transformer(torch.cat([d1, d2, d3, self.c4(r3)], dim=1)) + x


class IMDTN(nn.Module):
    derived_buffer_suffixes = ("attn_mask", "relative_position_index")
    upsampler_weight_key = "upsampler.0.weight"
    pad_multiple = 1  # the network pads itself (see the module docstring)
    pad_mode = "flip_concat"

    def __init__(self, scale: int = 4, nf: int = 64, num_blocks: int = 3):
        super().__init__()
        self.scale, self.num_blocks = scale, num_blocks
        self.fea_conv = conv3x3(3, nf)
        for i in range(1, num_blocks + 1):  # IMDTB1..IMDTB3 as in the checkpoint
            self.add_module(f"IMDTB{i}", IMDTBlock(nf))
        self.c = nn.Sequential(nn.Conv2d(nf * num_blocks, nf, 1), nn.LeakyReLU(LRELU_SLOPE))
        self.LR_conv = conv3x3(nf, nf)
        self.upsampler = nn.Sequential(conv3x3(nf, 3 * scale * scale), nn.PixelShuffle(scale))

    def blocks(self) -> list[IMDTBlock]:
        return [getattr(self, f"IMDTB{i}") for i in range(1, self.num_blocks + 1)]

    def feature_modules(self) -> list[nn.Module]:
        return list(self.blocks())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        fea = self.fea_conv(pad_past_multiple(x, WINDOW))
        outs, out = [], fea
        for block in self.blocks():
            out = block(out)
            outs.append(out)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)[:, :, :h * self.scale, :w * self.scale]


@register_model("imdtn", scales=(4,), quant_scopes=("2dquant+convs", "2dquant", "ptq4sr"),
                description="IMDTN (NTIRE 2022 ESR, team ZLZ: IMDN blocks with Swin transformer blocks), x4 only")
def build_imdtn(scale: int) -> nn.Module:
    return IMDTN(scale).eval()
