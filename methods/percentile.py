"""Percentile (spec §4.2): l = quantile(v, p), u = quantile(v, 1 - p) over the calibration tensor.

The quantile is numpy's default definition (method="linear"): with the values sorted ascending
x_(0) <= ... <= x_(n-1), h = (n - 1) * q and quantile = x_(floor h) + (h - floor h) * (x_(floor h + 1) - x_(floor h)).
It is computed exactly from the order statistics of the core's sorted view (bench.quant.range_search, shared
with the other range rules; SwinIR's q, k and v quantizers see one tensor and sort it once): torch.quantile
refuses tensors above 16M elements and the attention maps have 50M.

The paper does not state p (spec D14); default p = 1e-4 (0.01% / 99.99%), recorded in the results.
Weights use min/max by default (`weights="minmax"`), or the same percentiles (`weights="percentile"`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from bench.quant import range_search
from bench.quant.quantizer import FakeQuantizer
from methods.base import RangeRuleMethod
from methods.minmax import minmax_range
from methods.registry import register_method

# Beyond this many order statistics from one end, a selection (kthvalue) beats a partial sort (topk).
_TOPK_LIMIT = 1 << 20


def _smallest(flat: torch.Tensor, count: int) -> torch.Tensor:
    """The `count` smallest values of `flat`, ascending."""
    return torch.topk(flat, count, largest=False, sorted=True).values


def order_statistic_pair(flat: torch.Tensor, index: int) -> tuple[float, float]:
    """(x_(index), x_(index + 1)) of the ascending order statistics (0-based; index + 1 clamped to n - 1)."""
    n = flat.numel()
    nxt = min(index + 1, n - 1)
    if nxt + 1 <= _TOPK_LIMIT:
        values = _smallest(flat, nxt + 1)
        return float(values[index]), float(values[nxt])
    if n - index <= _TOPK_LIMIT:  # near the top: the largest n - index values, descending
        values = torch.topk(flat, n - index, largest=True, sorted=True).values
        return float(values[n - 1 - index]), float(values[n - 1 - nxt])
    return float(torch.kthvalue(flat, index + 1).values), float(torch.kthvalue(flat, nxt + 1).values)


def quantile_linear(x: torch.Tensor, q: float) -> float:
    """numpy.quantile(x, q) (method="linear"), exact, for any tensor size (from the sorted view)."""
    return range_search.quantile_linear(range_search.cached_sorted_view(x), q)


def quantile_by_selection(x: torch.Tensor, q: float) -> float:
    """`quantile_linear` by selection (torch.topk / torch.kthvalue), without sorting: the independent check."""
    flat = x.detach().reshape(-1)
    n = flat.numel()
    h = (n - 1) * q
    index = min(int(math.floor(h)), n - 1)
    below, above = order_statistic_pair(flat, index)
    frac = h - index
    # numpy's lerp, in float64: b - (b - a) * (1 - t) when t >= 0.5 (monotone, exact at the ends)
    return above - (above - below) * (1.0 - frac) if frac >= 0.5 else below + (above - below) * frac


def percentile_range(x: torch.Tensor, p: float) -> tuple[float, float]:
    return quantile_linear(x, p), quantile_linear(x, 1.0 - p)


@register_method("percentile")
class Percentile(RangeRuleMethod):
    """Bounds = the p and 1-p quantiles of each activation (numpy 'linear'); weights min/max by default."""

    @dataclass(frozen=True)
    class Params:
        p: float = 1e-4
        weights: Literal["minmax", "percentile"] = "minmax"

        def __post_init__(self) -> None:
            if not 0.0 <= self.p < 0.5:
                raise ValueError(f"p={self.p} must be in [0, 0.5) (the clipped mass at each end)")

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        return percentile_range(x, self.params.p)

    def weight_range(self, w: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        if self.params.weights == "percentile":
            return percentile_range(w, self.params.p)
        return minmax_range(w)


__all__ = ["Percentile", "quantile_linear", "percentile_range"]
