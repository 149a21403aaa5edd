"""Evaluate an SR model on a test set: `evaluate(model, dataset, scale) -> EvalResult` (spec §5).

Per image: upscale the LR (bench.inference), PSNR/SSIM on Y with border = scale, optionally LPIPS; the set's
numbers are the means over its images. LPIPS is None when its weights are not on disk (one warning).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import torch.nn as nn

from bench.inference import TileConfig, resolve_device, tile_config, upscale
from bench.metrics.psnr_ssim import psnr_y, ssim_y


@dataclass
class ImageResult:
    name: str
    psnr: float
    ssim: float
    lpips: float | None = None


@dataclass
class EvalResult:
    psnr: float
    ssim: float
    lpips: float | None
    images: int
    per_image: list[ImageResult]
    dataset: str
    scale: int
    is_subset: bool = False
    expected_count: int | None = None
    tiled: dict | None = None       # tile settings when tiled inference was used (not the protocol)
    device: str = "cpu"
    seconds: float = 0.0
    # SR outputs by image name, only with evaluate(..., return_outputs=True); left out of to_dict().
    outputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "scale": self.scale, "psnr": self.psnr, "ssim": self.ssim,
                "lpips": self.lpips, "images": self.images, "is_subset": self.is_subset,
                "expected_count": self.expected_count, "tiled": self.tiled, "device": self.device,
                "seconds": self.seconds,
                "per_image": [{"name": r.name, "psnr": r.psnr, "ssim": r.ssim, "lpips": r.lpips}
                              for r in self.per_image]}


def _mean(values: Iterable[float | None]) -> float | None:
    values = list(values)
    if not values or any(v is None for v in values):
        return None
    return float(math.fsum(values) / len(values))


def _progress(iterable, total: int, label: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=label, unit="img", leave=False)


def evaluate(model: nn.Module, dataset, scale: int, device: str | None = None, lpips: bool = True,
             progress: bool = True, tile: int | TileConfig | None = None,
             return_outputs: bool = False) -> EvalResult:
    """Mean PSNR/SSIM (Y, border = scale) and LPIPS over `dataset` (any sized iterable of pairs with
    `.name`, `.hr`, `.lr`; `load_dataset` returns one)."""
    target = resolve_device(device)
    tile = tile_config(tile)
    lpips_metric = None
    if lpips:
        from bench.metrics.lpips import LPIPSMetric
        lpips_metric = LPIPSMetric(device=target)
        if not lpips_metric.available:
            lpips_metric = None
    name = getattr(dataset, "name", type(dataset).__name__)
    per_image, outputs = [], {}
    start = time.perf_counter()
    for pair in _progress(dataset, len(dataset), f"{name} x{scale}", progress):
        sr = upscale(model, pair.lr, scale, target, tile=tile)
        per_image.append(ImageResult(pair.name, psnr_y(sr, pair.hr, scale), ssim_y(sr, pair.hr, scale),
                                     lpips_metric(sr, pair.hr, scale) if lpips_metric else None))
        if return_outputs:
            outputs[pair.name] = sr
    seconds = time.perf_counter() - start
    return EvalResult(
        psnr=_mean(r.psnr for r in per_image), ssim=_mean(r.ssim for r in per_image),
        lpips=_mean(r.lpips for r in per_image) if lpips_metric else None,
        images=len(per_image), per_image=per_image, dataset=name, scale=scale,
        is_subset=bool(getattr(dataset, "is_subset", False)),
        expected_count=getattr(dataset, "expected_count", None),
        tiled=tile.describe() if tile else None, device=str(target), seconds=seconds,
        outputs=outputs if return_outputs else None)
