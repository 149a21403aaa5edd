"""Run an SR model on one uint8 image (spec §5): `upscale(model, lr_u8, scale) -> sr_u8`.

Whole image, no self-ensemble, no gradients. Models that need input sides divisible by `model.pad_multiple` get
the LR padded only when needed, with `model.pad_mode`; the output is cropped back to (h*s, w*s), clamped to
[0, 1], scaled by 255 and rounded to uint8. Optional tiling (off by default) bounds memory on large images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import ConfigError

FLIP_CONCAT = "flip_concat"
DEFAULT_TILE_OVERLAP = 32


@dataclass(frozen=True)
class TileConfig:
    """Tiled inference: LR tiles of `size` pixels overlapping by `overlap`, outputs averaged where they meet."""
    size: int
    overlap: int = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.overlap < self.size:
            raise ConfigError(f"tile {self.size} with overlap {self.overlap} is invalid; use a tile size > overlap >= 0")

    def describe(self) -> dict:
        return {"tile": self.size, "overlap": self.overlap}


def tile_config(tile: int | TileConfig | None) -> TileConfig | None:
    """An int is a tile size, with the default overlap (at most a quarter of the tile)."""
    if tile is None or isinstance(tile, TileConfig):
        return tile
    return TileConfig(int(tile), min(DEFAULT_TILE_OVERLAP, int(tile) // 4))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """None -> CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _flip_concat(x: torch.Tensor, target: int, dim: int) -> torch.Tensor:
    # Append the mirrored image (then truncate), repeatedly if the image is smaller than the padding.
    while x.shape[dim] < target:
        x = torch.cat([x, torch.flip(x, [dim])], dim)
    return x.narrow(dim, 0, target)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = FLIP_CONCAT) -> torch.Tensor:
    """Pad (B, C, h, w) at the bottom/right to sides divisible by `multiple`; unchanged if they already are."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if multiple <= 1 or (pad_h == 0 and pad_w == 0):
        return x
    if mode == FLIP_CONCAT:
        return _flip_concat(_flip_concat(x, h + pad_h, 2), w + pad_w, 3)
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _model_device(model: nn.Module) -> torch.device | None:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return None


def forward_padded(model: nn.Module, x: torch.Tensor, scale: int) -> torch.Tensor:
    """model(x) with the padding the model asks for, output cropped to (h*s, w*s)."""
    h, w = x.shape[-2:]
    multiple = int(getattr(model, "pad_multiple", 1) or 1)
    padded = pad_to_multiple(x, multiple, getattr(model, "pad_mode", FLIP_CONCAT))
    out = model(padded)
    return out[..., :h * scale, :w * scale]


def _tile_starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return starts + [length - size]


def forward_tiled(model: nn.Module, x: torch.Tensor, scale: int, tile: TileConfig) -> torch.Tensor:
    """Overlapping tiles: outputs summed and divided by how many tiles cover each pixel."""
    b, c, h, w = x.shape
    size_h, size_w = min(tile.size, h), min(tile.size, w)
    stride = max(1, tile.size - tile.overlap)
    out = torch.zeros(b, c, h * scale, w * scale, dtype=x.dtype, device=x.device)
    weight = torch.zeros_like(out[:, :1])
    for top in _tile_starts(h, size_h, stride):
        for left in _tile_starts(w, size_w, stride):
            patch = forward_padded(model, x[..., top:top + size_h, left:left + size_w], scale)
            rows = slice(top * scale, (top + size_h) * scale)
            cols = slice(left * scale, (left + size_w) * scale)
            out[..., rows, cols] += patch
            weight[..., rows, cols] += 1
    return out / weight


def to_tensor(img_u8: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 (1, 3, H, W) in [0, 1]."""
    # astype copies, so read-only arrays (np.asarray of a PIL image) are fine.
    return torch.from_numpy(np.asarray(img_u8).astype(np.float32)).permute(2, 0, 1)[None].div_(255.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) -> uint8 HxWx3: clamp to [0, 1], *255, round."""
    return x[0].clamp(0, 1).mul(255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def upscale(model: nn.Module, lr_u8: np.ndarray, scale: int, device: str | torch.device | None = None,
            tile: int | TileConfig | None = None) -> np.ndarray:
    """Super-resolve one uint8 HxWx3 image; returns uint8 (h*scale)x(w*scale)x3.

    `device` None: CUDA when available (the model is moved there). `tile`: LR tile size (or a TileConfig)
    for tiled inference; None = whole image (the protocol).
    """
    target = resolve_device(device)
    if _model_device(model) not in (None, target):
        model.to(target)
    model.eval()
    tile = tile_config(tile)
    x = to_tensor(lr_u8).to(target)
    with torch.no_grad():
        out = forward_tiled(model, x, scale, tile) if tile is not None else forward_padded(model, x, scale)
    expected = (lr_u8.shape[0] * scale, lr_u8.shape[1] * scale)
    if tuple(out.shape[-2:]) != expected:
        raise ConfigError(f"the model returned {tuple(out.shape[-2:])} for a {lr_u8.shape[:2]} input at x{scale}; "
                         f"expected {expected}: is it an x{scale} model?")
    return to_uint8(out)
