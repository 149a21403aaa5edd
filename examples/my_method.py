"""A complete third-party PTQ method, loaded as a plugin:

    bench --plugin examples/my_method.py methods list
    bench --plugin examples/my_method.py quantize --model imdn --scale 2 --method absmax-symmetric \
          --bits 8 --calib DIR --out absmax.pt

"absmax-symmetric": symmetric bounds l = -max|v|, u = max|v| for every tensor (weights and activations).
Optionally the bound is shrunk by a factor (`shrink`), a toy hyper-parameter showing how Params work.

A range-rule method only implements `range(x, quantizer) -> (l, u)`; `RangeRuleMethod.calibrate` applies it
to every weight (per output channel when the scope asks for it) and to every activation quantizer's input
captured on the calibration batch. For a method that also fine-tunes the bounds, subclass `PTQMethod`,
call `set_bounds_from_rule(qmodel, ctx, rule)` first, then train `bench.quant.bound_parameters(qmodel)`.
"""
# No `from __future__ import annotations` here: bench.plugins does not register the plugin module in
# sys.modules, and dataclasses needs that to resolve string annotations.
from dataclasses import dataclass

import torch

from bench.quant import FakeQuantizer
from methods.base import RangeRuleMethod
from methods.registry import register_method


@register_method("absmax-symmetric")
class AbsMaxSymmetric(RangeRuleMethod):
    """Symmetric bounds -shrink*max|v|, shrink*max|v| (a plugin example)."""

    @dataclass(frozen=True)
    class Params:
        shrink: float = 1.0

        def __post_init__(self) -> None:
            if not 0.0 < self.shrink <= 1.0:
                raise ValueError(f"shrink={self.shrink} must be in (0, 1]")

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        bound = self.params.shrink * float(x.detach().abs().max())
        return -bound, bound
