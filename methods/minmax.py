"""MinMax (spec §4.1): l = min(v), u = max(v) over the calibration tensor, per tensor.

Weights: min/max of the weight tensor (per output channel for per-channel weight quantizers).
This is also the initialisation of "DQC only" in the 2DQuant paper's ablation (Table 4c).

Paper / official code / this project: the paper's rule (spec §4.1; 2DQuant Table 4c's "no DOBI, no DQC" row, equal
to its Table 3 MinMax row) and the 2DQuant code's initialisation of "DQC only" are the same min/max; there is no
separate official MinMax code (spec D14). This project = the paper, nothing differs, nothing to measure.
"""
from __future__ import annotations

import torch

from bench.quant.quantizer import FakeQuantizer
from methods.base import RangeRuleMethod
from methods.registry import register_method


def minmax_range(x: torch.Tensor) -> tuple[float, float]:
    lower, upper = torch.aminmax(x.detach())
    return float(lower), float(upper)


@register_method("minmax")
class MinMax(RangeRuleMethod):
    """Bounds = min and max of each tensor (weights and calibration activations)."""

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        return minmax_range(x)
