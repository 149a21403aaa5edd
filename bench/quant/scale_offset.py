"""The `scale-offset` quantizer type: the uniform quantizer with a learnable offset on its step and on its zero
point (CompSRT's "scalar decomposition", methods/compsrt.py), trained with the bounds.

    s = max((u - l) / N + alpha, 1e-12),   Z = l + beta
    forward(x) = s * clamp(round((clip(x, l, u) - Z) / s), 0, N) + Z          (round: STE; N = 2^b - 1)

alpha and beta have the bounds' shape (per tensor or per channel) and start at 0, where the type is the uniform
quantizer bit for bit (its fast paths included, as long as alpha and beta need no gradient). The clamp of the
codes to 0..N keeps it a b-bit quantizer: its grid is Z + k s, k = 0..N, so it packs and dequantizes like the
uniform one with scale s and lower Z (`dequant_grid`). CompSRT's released code does not clamp the codes (a
negative alpha or an offset beyond half a step reaches one more level than b bits hold).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.quantizer import _MIN_STEP, FakeQuantizer, _ClipWithBoundGrads, _round_ste, _scale_grad


@register_quantizer_type("scale-offset")
class ScaleOffsetQuantizer(FakeQuantizer):
    """FakeQuantizer with learnable `alpha` (added to the step) and `beta` (added to the zero point)."""

    def __init__(self, bits: int, kind: str = "act", per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(bits, kind, per_channel_axis=per_channel_axis, channels=channels)
        shape = self.lower.shape
        self.alpha = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(shape), requires_grad=False)

    def offset_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def _plain_uniform(self) -> bool:
        return not (self.alpha.requires_grad or self.beta.requires_grad) and not (
            bool(self.alpha.detach().any()) or bool(self.beta.detach().any()))

    def dequant_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(step s, zero point Z), detached, in the bounds' shape: the dequantized value of code k is s k + Z."""
        lower, upper = self.lower.detach(), self.upper.detach()
        step = torch.clamp((upper - lower) / self.levels + self.alpha.detach(), min=_MIN_STEP)
        return step, lower + self.beta.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        if self._plain_uniform():
            return super().forward(x)
        lower, upper, alpha, beta = self.lower, self.upper, self.alpha, self.beta
        if self.grad_scale is not None:
            lower, upper = _scale_grad(lower, self.grad_scale), _scale_grad(upper, self.grad_scale)
        lower, upper = self._broadcast(lower, x), self._broadcast(upper, x)
        alpha, beta = self._broadcast(alpha, x), self._broadcast(beta, x)
        step = torch.clamp((upper - lower) / self.levels + alpha, min=_MIN_STEP)
        zero = lower + beta
        clipped = _ClipWithBoundGrads.apply(x, lower, upper)
        if not torch.is_grad_enabled():
            codes = ((clipped - zero) / step).round_().clamp_(0, self.levels)
            return codes.mul_(step).add_(zero)
        codes = torch.clamp(_round_ste((clipped - zero) / step), 0, self.levels)
        return step * codes + zero

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        step, zero = self.dequant_grid()
        lower, upper = self._broadcast(self.lower.detach(), w), self._broadcast(self.upper.detach(), w)
        clipped = torch.minimum(torch.maximum(w.detach(), lower), upper)
        return torch.clamp(torch.round((clipped - self._broadcast(zero, w)) / self._broadcast(step, w)), 0,
                           self.levels)

    def quant_state(self) -> dict[str, torch.Tensor]:
        return {"alpha": self.alpha.detach().cpu().clone(), "beta": self.beta.detach().cpu().clone()}

    @torch.no_grad()
    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"alpha", "beta"}:
            raise ValueError(f"a scale-offset quantizer's state is alpha and beta, got {sorted(state)}")
        for name in ("alpha", "beta"):
            value = torch.as_tensor(state[name], dtype=torch.float32)
            target = getattr(self, name)
            if value.shape != target.shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, the quantizer {tuple(target.shape)}")
            target.copy_(value)
