"""Twin-uniform quantizer type `twin-uniform` (PTQ4ViT, Yuan et al., ECCV 2022, §4.1).

Two uniform ranges of b - 1 bits each (one bit says which range a value uses), so a value still costs b bits;
with c = 2^(b-1) - 1 codes per range:
    step of R2:  D2 = upper / c          (the large range)
    step of R1:  D1 = D2 / 2^m           (m = `shift` >= 0, an integer: the steps differ by a power of two, so
                                          the two ranges align with one bit shift, the paper's constraint)
  * unsigned (lower = 0, post-softmax maps in [0, 1]): R1 = [0, 2^(b-1) D1), the paper's range for the many
    small attention weights, and R2 = [0, c D2] for the rest:
        Q(v) = D1 * clamp(round(v / D1), 0, c)   if v < 2^(b-1) D1,
               D2 * clamp(round(v / D2), 0, c)   otherwise;
  * signed (lower = -c D1 < 0, post-GELU inputs): negative values in their own range R1 = [-c D1, 0], positive
    ones in R2 = [0, c D2]:
        Q(v) = -D1 * clamp(round(-v / D1), 0, c)  if v < 0,   D2 * clamp(round(v / D2), 0, c)  otherwise.
Rounding is half to even. The bounds are the range the type covers: [0, upper] or [-c D1, upper]; the shift m is
learned state beyond the bounds (`quant_state`), saved and loaded with them. Set both with `set_twin`.

Gradients: the straight-through estimator for the input (1 inside [lower, upper], 0 where clipped), none for
the bounds or the shift: PTQ4ViT searches its scaling factors and never trains them, so this type is for
calibration by search and inference; bound training (DQC, Pac) on it is not supported.
"""
from __future__ import annotations

import torch

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.quantizer import FakeQuantizer


def codes_per_range(bits: int) -> int:
    """c = 2^(b-1) - 1, the largest code of each range."""
    return 2 ** (bits - 1) - 1


@torch.no_grad()
def twin_quantize_values(x: torch.Tensor, upper: float, shift: int, bits: int, signed: bool) -> torch.Tensor:
    """Q(x) of the module docstring for a float `upper` and integer `shift` (no autograd)."""
    c = codes_per_range(bits)
    step2 = torch.tensor(upper / c, dtype=x.dtype, device=x.device)
    step1 = step2 * (2.0 ** -shift)  # a power of two: exact in floating point, so D2 / D1 == 2^m exactly
    if signed:
        negative = -torch.clamp(torch.round(-x / step1), 0, c) * step1
        positive = torch.clamp(torch.round(x / step2), 0, c) * step2
        return torch.where(x < 0, negative, positive)
    small = torch.clamp(torch.round(x / step1), 0, c) * step1
    large = torch.clamp(torch.round(x / step2), 0, c) * step2
    return torch.where(x < (c + 1) * step1, small, large)


@register_quantizer_type("twin-uniform")
class TwinUniformQuantizer(FakeQuantizer):
    """Two uniform ranges whose steps differ by 2^shift (see module docstring); per-tensor only."""

    extra_scalars = 1  # the shift, stored besides (lower, upper): the cost model's size counts it

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.per_channel:
            raise ValueError("twin-uniform quantizers are per-tensor (activation) quantizers")
        self.shift = 0

    @property
    def signed(self) -> bool:
        return bool(self.lower.detach() < 0)

    def steps(self) -> tuple[float, float]:
        """(D1, D2): the steps of the small and the large range."""
        step2 = float(self.upper.detach()) / codes_per_range(self.bits)
        return step2 * 2.0 ** -self.shift, step2

    def set_twin(self, upper: float, shift: int, signed: bool) -> None:
        """R2 = [0, upper] with step upper / c, R1 with step D2 / 2^shift; signed puts negatives in R1."""
        if isinstance(shift, bool) or int(shift) != shift or shift < 0:
            raise ValueError(f"twin-uniform shift must be an integer >= 0, got {shift!r}")
        self.shift = int(shift)
        step1 = upper / codes_per_range(self.bits) * 2.0 ** -self.shift
        self.set_bounds(-codes_per_range(self.bits) * step1 if signed else 0.0, upper)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        q = twin_quantize_values(x.detach(), float(self.upper.detach()), self.shift, self.bits, self.signed)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return q
        inside = (x >= self.lower.detach()) & (x <= self.upper.detach())  # STE inside the covered range
        return q + (x - x.detach()) * inside

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("twin-uniform quantizers are activation-only: no integer weight codes")

    def quant_state(self) -> dict[str, torch.Tensor]:
        return {"shift": torch.tensor(self.shift, dtype=torch.int64)}

    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {"shift"}:
            raise ValueError(f"twin-uniform state must hold 'shift', got {sorted(state)}")
        self.shift = int(state["shift"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, shift={self.shift}"
