"""Percentile (spec §4.2): l = quantile(v, p), u = quantile(v, 1 - p) over the calibration tensor.

The quantile is numpy's default definition (method="linear"): with the values sorted ascending
x_(0) <= ... <= x_(n-1), h = (n - 1) * q and quantile = x_(floor h) + (h - floor h) * (x_(floor h + 1) - x_(floor h)).
It is computed exactly from the order statistics of the core's sorted view (bench.quant.range_search, shared
with the other range rules; SwinIR's q, k and v quantizers see one tensor and sort it once): torch.quantile
refuses tensors above 16M elements and the attention maps have 50M.

The paper does not state p (spec D14); default p = 1e-4 (0.01% / 99.99%), recorded in the results.
Weights use min/max by default (`weights="minmax"`), or the same percentiles (`weights="percentile"`).

Paper / official code / this project: the paper names Percentile (FQN, Li et al. 2019) without a value and the
2DQuant code has none (spec §4.2, D14), so there is no official code to match. p = 1e-4 is this project's choice
(the clipped mass of PTQ4SR's released DBDC code below 8 bits), weights min/max by default; both recorded. The
effect of p against the paper's unknown value cannot be measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.quant import range_search
from bench.quant.quantizer import FakeQuantizer
from methods.base import RangeRuleMethod
from methods.minmax import minmax_range
from methods.registry import register_method


def quantile_linear(x: torch.Tensor, q: float) -> float:
    """numpy.quantile(x, q) (method="linear"), exact, for any tensor size (from the sorted view)."""
    return range_search.quantile_linear(range_search.cached_sorted_view(x), q)


def percentile_range(x: torch.Tensor, p: float) -> tuple[float, float]:
    return quantile_linear(x, p), quantile_linear(x, 1.0 - p)


@register_method("percentile")
class Percentile(RangeRuleMethod):
    """Bounds = the p and 1-p quantiles of each activation (numpy 'linear'); weights min/max by default."""

    thread_safe_range = True  # a sort per tensor: worth the worker threads (cache is thread-safe)

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
