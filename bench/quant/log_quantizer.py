"""Logarithmic quantizer types `log2` and `log-sqrt2` (RepQ-ViT's post-softmax quantizer, Li et al., ICCV 2023).

Definition (b bits, base B = 2 or sqrt(2), scale s = `upper`):
  * unsigned (lower = 0; post-softmax maps, values in [0, 1]): the 2^b codes are P = 2^b - 1 powers and zero,
        k(v) = round(-log_B(v / s))  (half to even),   Q(v) = s * B^(-k)   if 0 <= k <= P - 1   (k < 0 -> k = 0),
        Q(v) = 0                                                           if k >= P or v <= 0;
    so the levels are s, s/B, ..., s/B^(P-1) and 0; above s an input is clipped to s.
  * signed (lower = -s < 0): one sign bit and b - 1 bits of magnitude, P = 2^(b-1) - 1 powers and zero,
        Q(v) = sign(v) * Q_unsigned(|v|).
The bounds keep their meaning, the range the type covers: [0, s] or [-s, s].

Why 2^b - 1 powers and not 2^b: RepQ-ViT's paper clamps the exponent at 2^b - 1 (2^b powers, no zero) and its
released code maps exponents >= 2^b to 0 (2^b powers *and* zero, 2^b + 1 values). A b-bit code has 2^b values, so
this project keeps zero (most of a softmax map is ~0) and 2^b - 1 powers: the quantizer stores exactly b bits per
activation, which is what the cost model and packed sizes count (`bits`). Rounding is in the log domain, as in
both: a value goes to the power nearest in exponent (the boundary between s*B^-k and s*B^-(k+1) is their
geometric mean), and to 0 once it is nearer in exponent to s*B^-P than to the last power.

Gradients: the straight-through estimator for the input (dQ/dv = 1 inside [-s, s] or [0, s], 0 where clipped);
none for the bounds. RepQ-ViT sets s by a search and never trains it, so bound training (DQC, Pac) on this type
is not supported: `lower`/`upper` receive no gradient from it.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.quantizer import FakeQuantizer


def log_powers(bits: int, signed: bool) -> int:
    """P, the number of non-zero magnitude levels: 2^b - 1 unsigned, 2^(b-1) - 1 signed (one code is 0)."""
    return 2 ** (bits - 1 if signed else bits) - 1


@torch.no_grad()
def log_quantize_values(x: torch.Tensor, scale: torch.Tensor, bits: int, log2_base: float, signed: bool) -> torch.Tensor:
    """Q(x) of the module docstring (no autograd); `log2_base` = log2(B): 1 for log2, 0.5 for log-sqrt2."""
    powers = log_powers(bits, signed)
    magnitude = x.abs() if signed else torch.clamp(x, min=0)
    # exponent k = round(-log_B(|v| / s)); 0 / s -> -inf -> k = +inf -> zero
    k = torch.round(-torch.log2(magnitude / scale) / log2_base)
    k.clamp_(min=0)
    zero = k >= powers
    # s * 2^(-k * log2(B)): for sqrt(2), 2^(-k/2) is exact for even k and the nearest float otherwise
    out = scale * torch.exp2(-k.clamp_(max=powers) * log2_base)
    out = out.masked_fill_(zero, 0.0)
    return out * torch.sign(x) if signed else out


class LogQuantizer(FakeQuantizer):
    """Power-of-B quantizer (see module docstring); subclasses fix the base."""

    log2_base: ClassVar[float] = 1.0

    @property
    def signed(self) -> bool:
        return bool((self.lower.detach() < 0).any())

    @property
    def scale(self) -> torch.Tensor:
        """s, the largest level (the clip point)."""
        return self.upper

    def set_scale(self, scale: float, signed: bool = False) -> None:
        """Bounds [0, s] (unsigned) or [-s, s] (signed)."""
        self.set_bounds(-scale if signed else 0.0, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        scale = self._broadcast(self.upper.detach(), x)
        q = log_quantize_values(x.detach(), scale, self.bits, self.log2_base, self.signed)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return q
        # STE: gradient 1 where v is inside the covered range, 0 where it was clipped
        low = -scale if self.signed else torch.zeros_like(scale)
        inside = (x >= low) & (x <= scale)
        return q + (x - x.detach()) * inside

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.quant_type} quantizers are activation-only: no integer weight codes")


@register_quantizer_type("log2")
class Log2Quantizer(LogQuantizer):
    """Levels s * 2^-k, k = 0..P-1, and 0."""

    log2_base = 1.0


@register_quantizer_type("log-sqrt2")
class LogSqrt2Quantizer(LogQuantizer):
    """Levels s * sqrt(2)^-k, k = 0..P-1, and 0 (RepQ-ViT's post-softmax quantizer)."""

    log2_base = 0.5

