"""SwinIR (Liang et al., ICCVW 2021) for classical and lightweight image super-resolution.

Written for this benchmark from the architecture description (spec §1). Module names follow the official
checkpoints (`conv_first`, `patch_embed.norm`, `layers.{i}.residual_group.blocks.{j}.{norm1, attn.qkv, attn.proj,
attn.relative_position_bias_table, norm2, mlp.fc1, mlp.fc2}`, `layers.{i}.conv`, `norm`, `conv_after_body`,
then `upsample.0` (lightweight, pixel-shuffle-direct) or `conv_before_upsample.0`, `upsample.{0,2,..}`,
`conv_last` (classical)), so that `002_lightweightSR_...SwinIR-S_x{2,3,4}.pth` and
`001_classicalSR_...SwinIR-M_x{2,3,4}.pth` load strictly.

Quantization-relevant choices:
  * the two attention batch-matmuls are `models.layers.MatMul` modules, `attn.matmul_qk(q * head_dim**-0.5, k^T)`
    and `attn.matmul_av(softmax map, v)`, so the quantization core can wrap them;
  * the shift mask and the relative-position index are derived from the configuration and the input size: they
    are never stored in a state dict (non-persistent / cached), and the official checkpoints' copies are dropped
    on load (`derived_buffer_suffixes`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn

from models.layers import MatMul
from models.registry import register_model

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted on input and added back on output
MASK_VALUE = -100.0  # logit offset that keeps tokens from different shifted regions apart


@dataclass(frozen=True)
class SwinIRConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 8
    mlp_ratio: float = 2.0
    upsampler: str = "pixelshuffledirect"  # or "pixelshuffle"
    img_range: float = 1.0
    drop_path_rate: float = 0.1
    num_feat: int = 64  # channels before the pixel-shuffle stages of the classical upsampler
    in_chans: int = 3


LIGHT = SwinIRConfig(embed_dim=60, depths=(6,) * 4, num_heads=(6,) * 4, upsampler="pixelshuffledirect")
CLASSICAL_M = SwinIRConfig(embed_dim=180, depths=(6,) * 6, num_heads=(6,) * 6, upsampler="pixelshuffle")


# ------------------------------------------------------------------------------------------------ helpers

def flip_concat_pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to a multiple of `multiple` by appending the flipped image and
    truncating (SwinIR's test-time padding, spec §5); no-op when already a multiple."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h:
        x = torch.cat([x, torch.flip(x, [2])], dim=2)[:, :, :h + pad_h, :]
    if pad_w:
        x = torch.cat([x, torch.flip(x, [3])], dim=3)[:, :, :, :w + pad_w]
    return x


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_merge(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the ((2ws-1)^2, heads) bias table for every (query, key) token pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # each offset in [0, 2ws-2]
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


@lru_cache(maxsize=8)  # a handful of input sizes at a time (an evaluation set has many; masks are cheap)
def _shift_mask_cpu(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    region = torch.zeros(1, h, w, 1)
    bands = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for wsl in bands:
            region[:, hs, wsl, :] = label
            label += 1
    labels = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.zeros(different.shape).masked_fill(different, MASK_VALUE)


def shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask for shifted windows of an (h, w) feature map: 0 within a region,
    -100 between tokens that the cyclic shift brought together from different regions."""
    return _shift_mask_cpu(h, w, ws, shift).to(device=device, dtype=dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample during training only."""

    def __init__(self, prob: float):
        super().__init__()
        self.prob = prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob == 0.0:
            return x
        keep = 1.0 - self.prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


# ------------------------------------------------------------------------------------------------ blocks

class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows, with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.matmul_qk = MatMul()
        self.softmax = nn.Softmax(dim=-1)
        self.matmul_av = MatMul()
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.num_heads).permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (num_windows * B, N, C); mask: (nW, N, N) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (bw, heads, N, head_dim)
        logits = self.matmul_qk(q * self.scale, k.transpose(-2, -1)) + self.position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            logits = logits.view(bw // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            logits = logits.view(bw, self.num_heads, n, n)
        out = self.matmul_av(self.softmax(logits), v)
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    """LN -> (shifted) window attention -> residual; LN -> MLP -> residual. Tokens are (B, H*W, C)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 drop_path: float):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        b, _, c = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = shift_mask(h, w, ws, shift, x.device, x.dtype)
        y = window_merge(self.attn(window_partition(y, ws), mask), ws, h, w)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """A stage of Swin blocks, shift 0 on even blocks and window_size // 2 on odd ones."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2,
                                 mlp_ratio, drop_paths[j])
            for j in range(depth))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, size)
        return x


def tokens_to_map(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, size[0], size[1])


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class RSTB(nn.Module):
    """Residual Swin Transformer block: Swin stage -> 3x3 conv on the feature map -> + input."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_paths: list[float]):
        super().__init__()
        self.residual_group = BasicLayer(dim, depth, num_heads, window_size, mlp_ratio, drop_paths)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.conv(tokens_to_map(self.residual_group(x, size), size))) + x


class PatchEmbedNorm(nn.Module):
    """Feature map -> tokens, then LayerNorm (named `patch_embed.norm` in the checkpoints)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(map_to_tokens(x))


def classical_upsampler(scale: int, num_feat: int) -> nn.Sequential:
    """(conv -> PixelShuffle(2)) x log2(scale), or one conv -> PixelShuffle(3)."""
    if scale == 3:
        return nn.Sequential(nn.Conv2d(num_feat, 9 * num_feat, 3, padding=1), nn.PixelShuffle(3))
    if scale & (scale - 1):
        raise ValueError(f"classical SwinIR upsampler supports scales 2^n and 3, got {scale}")
    stages: list[nn.Module] = []
    for _ in range(scale.bit_length() - 1):
        stages += [nn.Conv2d(num_feat, 4 * num_feat, 3, padding=1), nn.PixelShuffle(2)]
    return nn.Sequential(*stages)


# ------------------------------------------------------------------------------------------------ network

class SwinIR(nn.Module):
    derived_buffer_suffixes = ("attn_mask", "relative_position_index")
    upsampler_weight_key = "upsample.0.weight"
    pad_mode = "flip_concat"

    def __init__(self, scale: int, config: SwinIRConfig = LIGHT):
        super().__init__()
        self.scale, self.config = scale, config
        self.pad_multiple = config.window_size
        self.img_range = config.img_range
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        dim = config.embed_dim
        self.conv_first = nn.Conv2d(config.in_chans, dim, 3, padding=1)
        self.patch_embed = PatchEmbedNorm(dim)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        starts = [sum(config.depths[:i]) for i in range(len(config.depths))]
        self.layers = nn.ModuleList(
            RSTB(dim, depth, heads, config.window_size, config.mlp_ratio, rates[start:start + depth])
            for depth, heads, start in zip(config.depths, config.num_heads, starts))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        if config.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, config.in_chans * scale ** 2, 3, padding=1),
                                          nn.PixelShuffle(scale))
        elif config.upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, config.num_feat, 3, padding=1),
                                                      nn.LeakyReLU(inplace=True))
            self.upsample = classical_upsampler(scale, config.num_feat)
            self.conv_last = nn.Conv2d(config.num_feat, config.in_chans, 3, padding=1)
        else:
            raise ValueError(f"unknown SwinIR upsampler {config.upsampler!r}")
        self.apply(_init_weights)
        self.eval()  # DropPath is active in training mode only; inference must never see it

    def feature_modules(self) -> list[nn.Module]:
        """Distillation taps: the Swin stage of each RSTB, output (B, H*W, C)."""
        return [layer.residual_group for layer in self.layers]

    def reconstruction_units(self) -> list[nn.Module]:
        """Block-reconstruction units (BRECQ/QDrop): every Swin block, in forward order."""
        return [block for layer in self.layers for block in layer.residual_group.blocks]

    def checkpoint_scale(self, state: dict[str, torch.Tensor]) -> int | None:
        """The scale a SwinIR state dict was trained for (None if it is not one of ours)."""
        first = state.get("upsample.0.weight")
        if first is None:
            return None
        if self.config.upsampler == "pixelshuffledirect":
            ratio, rest = divmod(first.shape[0], self.config.in_chans)
            root = round(ratio ** 0.5)
            return root if rest == 0 and root * root == ratio else None
        if first.shape[0] == 9 * self.config.num_feat:
            return 3
        stages = sum(1 for k in state if k.startswith("upsample.") and k.endswith(".weight"))
        return 2 ** stages if first.shape[0] == 4 * self.config.num_feat else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        size = (x.shape[2], x.shape[3])
        tokens = self.patch_embed(x)
        for layer in self.layers:
            tokens = layer(tokens, size)
        return tokens_to_map(self.norm(tokens), size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Callers pad with flip-concat themselves (pad_multiple/pad_mode); doing the same here keeps an odd-sized
        # direct call correct instead of failing inside the window partition.
        x = flip_concat_pad(x, self.pad_multiple)
        x = (x - self.mean) * self.img_range
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        if self.config.upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        else:
            out = self.upsample(feat)
        out = out / self.img_range + self.mean
        return out[:, :, :h * self.scale, :w * self.scale]


def _init_weights(module: nn.Module) -> None:
    # Transformer-style init as in the original training: truncated-normal linears, unit LayerNorms.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register_model("swinir-light", scales=(2, 3, 4), quant_scopes=("2dquant", "ptq4sr"),
                description="SwinIR-light / SwinIR-S (lightweight SR, 0.9M params), the 2DQuant backbone")
def build_swinir_light(scale: int) -> nn.Module:
    return SwinIR(scale, LIGHT)


@register_model("swinir-m", scales=(2, 3, 4), quant_scopes=("2dquant", "ptq4sr"),
                description="SwinIR-M (classical SR, 11.8M params)")
def build_swinir_m(scale: int) -> nn.Module:
    return SwinIR(scale, CLASSICAL_M)
