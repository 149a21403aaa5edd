"""The `scale-offset` quantizer type: the uniform quantizer with a learnable offset on its step and on its zero
point (CompSRT's "scalar decomposition", methods/compsrt.py), trained with the bounds.

    s = max((u - l) / N + alpha, 1e-12),   Z = l + beta                 (units "absolute", the released code)
    s = max((u - l) / N * (1 + alpha), 1e-12),   Z = l + beta (u - l) / N   (units "step", the default)
    forward(x) = s * clamp(round((clip(x, l, u) - Z) / s), 0, N) + Z          (round: STE; N = 2^b - 1)

computed as the uniform quantizer with bounds (Z, Z + N s) applied to clip(x, l, u), so that training and inference
take the core's one-node STE and fused kernels (`fake_quantize`; the step it derives from (Z, Z + N s) equals s up to
float32 rounding, and `dequant_grid` returns that step).

In "step" units alpha and beta are fractions of the step (u - l) / N, so one Adam update of lr 1e-2 moves a grid
by 1 % of its step whatever the tensor's range; in "absolute" units (CompSRT's code) by 0.01 in the tensor's own
units, which is many steps of a narrow weight. alpha and beta have the bounds' shape (per tensor or per channel)
and start at 0, where the type is the uniform
quantizer bit for bit (its fast paths included, as long as alpha and beta need no gradient). The clamp of the
codes to 0..N keeps it a b-bit quantizer: its grid is Z + k s, k = 0..N, so it packs and dequantizes like the
uniform one with scale s and lower Z (`dequant_grid`). CompSRT's released code does not clamp the codes (a
negative alpha or an offset beyond half a step reaches one more level than b bits hold).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.quantizer import (
    _MIN_STEP,
    FakeQuantizer,
    _ClipWithBoundGrads,
    _scale_grad,
    fake_quantize,
    fake_quantize_inference,
)


@register_quantizer_type("scale-offset")
class ScaleOffsetQuantizer(FakeQuantizer):
    """FakeQuantizer with learnable `alpha` (added to the step) and `beta` (added to the zero point)."""

    def __init__(self, bits: int, kind: str = "act", per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(bits, kind, per_channel_axis=per_channel_axis, channels=channels)
        shape = self.lower.shape
        self.alpha = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.units = "step"

    def set_units(self, units: str) -> None:
        if units not in ("step", "absolute"):
            raise ValueError(f"offset units {units!r}: use 'step' or 'absolute'")
        self.units = units

    def offset_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def _plain_uniform(self) -> bool:
        return not (self.alpha.requires_grad or self.beta.requires_grad) and not (
            bool(self.alpha.detach().any()) or bool(self.beta.detach().any()))

    def _grid_bounds(self, lower, upper, alpha, beta) -> tuple[torch.Tensor, torch.Tensor]:
        """(Z, Z + N s): the uniform grid the codes live on."""
        base = (upper - lower) / self.levels
        if self.units == "step":
            step, zero = torch.clamp(base * (1 + alpha), min=_MIN_STEP), lower + beta * base
        else:
            step, zero = torch.clamp(base + alpha, min=_MIN_STEP), lower + beta
        return zero, zero + step * self.levels

    def dequant_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(step, zero point Z), detached, in the bounds' shape: the dequantized value of code k is step k + Z."""
        lo, hi = self._grid_bounds(self.lower.detach(), self.upper.detach(), self.alpha.detach(), self.beta.detach())
        return torch.clamp((hi - lo) / self.levels, min=_MIN_STEP), lo

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        if self._plain_uniform():
            return super().forward(x)
        lower, upper, alpha, beta = self.lower, self.upper, self.alpha, self.beta
        if self.grad_scale is not None:
            lower, upper = _scale_grad(lower, self.grad_scale), _scale_grad(upper, self.grad_scale)
        lower, upper = self._broadcast(lower, x), self._broadcast(upper, x)
        lo, hi = self._grid_bounds(lower, upper, self._broadcast(alpha, x), self._broadcast(beta, x))
        if not torch.is_grad_enabled():
            return fake_quantize_inference(torch.clamp(x, lower, upper), lo, hi, self.bits)
        return fake_quantize(_ClipWithBoundGrads.apply(x, lower, upper), lo, hi, self.bits)

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """round((clip(clip(w, l, u), Z, Z + N s) - Z) / step) with the float32 ops of the forward."""
        step, zero = self.dequant_grid()
        _, hi = self._grid_bounds(self.lower.detach(), self.upper.detach(), self.alpha.detach(), self.beta.detach())
        b = lambda p: self._broadcast(p, w)  # noqa: E731
        clipped = torch.minimum(torch.maximum(w.detach(), b(self.lower.detach())), b(self.upper.detach()))
        clipped = torch.minimum(torch.maximum(clipped, b(zero)), b(hi))
        return torch.round((clipped - b(zero)) / b(step))

    def quant_state(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha.detach().cpu().clone(), "beta": self.beta.detach().cpu().clone(),
                "step_units": torch.tensor(self.units == "step")}

    @torch.no_grad()
    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        self.set_units("step" if bool(state.pop("step_units", torch.tensor(True))) else "absolute")
        if set(state) != {"alpha", "beta"}:
            raise ValueError(f"a scale-offset quantizer's state is alpha and beta, got {sorted(state)}")
        for name in ("alpha", "beta"):
            value = torch.as_tensor(state[name], dtype=torch.float32)
            target = getattr(self, name)
            if value.shape != target.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, the quantizer {tuple(target.shape)}")
            target.copy_(value)
