"""Quantizer types whose grid is one an integer runtime executes as it is: the `deploy` scope's quantizers.

The plain `uniform` quantizer (spec §2.3) puts its 2^b levels anywhere: l + k*s with a real-valued l. An integer
runtime stores a scale and an *integer* zero point, and its int8 convolution and matmul kernels want weights with
zero point 0. Two types give the fake-quant model exactly the grid the runtime computes with, so the benchmark's
PSNR is the deployed model's:

  * `int-zero-point` (activations): the range is first widened to contain 0 (a zero point must be a code), then
    s = (u - l) / N, z = clamp(round(-l / s), 0, N), and the grid is (k - z) * s, k = 0..N: onnxruntime's
    `quantize_static` and OpenVINO's FakeQuantize with uint8 activations compute these numbers from a (min, max).
  * `int-symmetric` (weights, per channel or per tensor): zero point 0 and the narrow signed range
    k * s, k = -M..M with M = 2^(b-1) - 1 and s = max(|l|, |u|) / M. This is onnxruntime's symmetric int8 weight
    quantization (QInt8, qmin = -127) and NNCF's (255 levels); OpenVINO keeps a convolution in int8 only with such
    weights: with asymmetric uint8 weights every conv of IMDN x2 ran in f32 (docs/deployment.md has the count).

Both keep the bounds (l, u) as their learnable parameters and map them to the grid in every forward, so a range
rule, a search (DOBI) and bound fine-tuning (DQC, Pac) all calibrate them as they calibrate a uniform quantizer;
what they set is then read through the grid. The mapping is differentiable where it is continuous: the rounding
of the zero point passes its gradient straight through, and max(|l|, |u|) routes the scale's gradient to the
larger bound.

An activation grid's step is at least `MIN_ACT_STEP`. A tensor that is constant on the calibration batch (IMDN
x2's fourth contrast-attention branch: a ReLU of an all-negative conv output, so all zeros) gets a zero-width
range, which `set_bounds` widens to 1e-6, a step of 3.9e-9. The runtime stores the next conv's bias in int32 with
scale s_in * s_w, and b / (3.9e-9 * s_w) overflows int32: onnxruntime's graph (which quantizes float biases at
its BASIC optimisation level) then computed that block's attention from a saturated bias, and IMDN x2 MinMax W7A8
lost 0.84 dB on Set5 against the fake quant (37.37 -> 36.53 dB). onnxruntime's own calibrator avoids it by
giving a constant tensor the scale 1.0. The floor of 2^-16 keeps |b| <= 2^31 * s_in * s_w for every |b| <= 1 with
s_w >= 1e-5, and is 0.0004 % of the smallest range of an 8-bit activation in the shipped models.

`integer_params()` returns the grid as the runtime stores it (scale, zero point, signed); the ONNX export writes it
unchanged, so no second rounding happens at export. The integer codes of a weight (`codes`) lie in 0..2M, code M
meaning 0, i.e. the int8 value plus M.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.quantizer import _MIN_STEP, FakeQuantizer, fake_quantize, fake_quantize_inference

MIN_ACT_STEP = 2.0 ** -16  # the smallest activation step (module docstring: the int32 bias must not overflow)


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def symmetric_max_code(bits: int) -> int:
    """M = 2^(b-1) - 1: the largest magnitude of a narrow-range signed b-bit code (127 at 8 bits)."""
    return 2 ** (bits - 1) - 1


@dataclass(frozen=True)
class IntegerParams:
    """A grid as a runtime stores it: value = (code - zero_point) * scale, code in [qmin, qmax]."""
    scale: torch.Tensor       # float32, per tensor or per channel
    zero_point: torch.Tensor  # int32, same shape
    qmin: int
    qmax: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0


class _IntegerGridQuantizer(FakeQuantizer):
    """Shared forward: map (lower, upper) to the grid's bounds, then run the uniform fake quantizer on them."""

    def grid_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                              torch.Tensor, torch.Tensor]:
        """(grid lower, grid upper, clip lower, clip upper): the N-step grid the values are rounded to and the
        range the input is clipped to first (narrower for the narrow-range weights)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        lower, upper = self.lower, self.upper
        grad = torch.is_grad_enabled() and (x.requires_grad or lower.requires_grad or upper.requires_grad)
        if not grad:
            lower, upper = lower.detach(), upper.detach()
        bounds = self.grid_bounds(lower, upper)
        narrow = bounds[2] is not bounds[0] or bounds[3] is not bounds[1]
        glo, ghi, clo, chi = (self._broadcast(t, x) for t in bounds)
        if narrow:
            x = torch.minimum(torch.maximum(x, clo), chi)
        if grad:
            return fake_quantize(x, glo, ghi, self.bits)
        return fake_quantize_inference(x, glo, ghi, self.bits)

    @torch.no_grad()
    def effective_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lowest, highest) value the quantizer outputs: the grid's clip range."""
        _, _, clo, chi = self.grid_bounds(self.lower.detach(), self.upper.detach())
        return clo.clone(), chi.clone()

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        glo, ghi, clo, chi = (self._broadcast(t, w) for t in self.grid_bounds(self.lower.detach(),
                                                                               self.upper.detach()))
        step = torch.clamp((ghi - glo) / self.levels, min=_MIN_STEP)
        return torch.round((torch.minimum(torch.maximum(w.detach(), clo), chi) - glo) / step)


@register_quantizer_type("int-zero-point")
class IntegerZeroPointQuantizer(_IntegerGridQuantizer):
    """Asymmetric unsigned grid with an integer zero point (uint8 activations of an integer runtime)."""

    def grid_bounds(self, lower, upper):
        n = self.levels
        lower = torch.clamp(lower, max=0.0)   # the range must contain 0: a zero point is a code
        upper = torch.clamp(upper, min=0.0)
        step = torch.clamp((upper - lower) / n, min=MIN_ACT_STEP)
        zero_point = torch.clamp(_round_ste(-lower / step), 0, n)
        glo = -zero_point * step
        ghi = glo + n * step
        return glo, ghi, glo, ghi

    @torch.no_grad()
    def integer_params(self) -> IntegerParams:
        glo, ghi, _, _ = self.grid_bounds(self.lower.detach().float(), self.upper.detach().float())
        step = torch.clamp((ghi - glo) / self.levels, min=MIN_ACT_STEP)
        zero_point = torch.round(-glo / step).to(torch.int32)
        return IntegerParams(step, zero_point, 0, self.levels)


@register_quantizer_type("int-symmetric")
class SymmetricQuantizer(_IntegerGridQuantizer):
    """Signed narrow-range grid with zero point 0 (int8 weights of an integer runtime): k*s, |k| <= 2^(b-1) - 1."""

    def grid_bounds(self, lower, upper):
        m = symmetric_max_code(self.bits)
        step = torch.clamp(torch.maximum(lower.abs(), upper.abs()) / m, min=_MIN_STEP)
        # The uniform grid l + k*s, k = 0..N with l = -(M+1) s holds every code -M-1..M; the clip keeps -M..M.
        glo, ghi = -(m + 1) * step, m * step
        return glo, ghi, -m * step, ghi

    @torch.no_grad()
    def integer_params(self) -> IntegerParams:
        m = symmetric_max_code(self.bits)
        step = torch.clamp(torch.maximum(self.lower.detach().abs(), self.upper.detach().abs()).float() / m,
                           min=_MIN_STEP)
        return IntegerParams(step, torch.zeros(step.shape, dtype=torch.int32), -m, m)


DEPLOY_WEIGHT_TYPE = SymmetricQuantizer.quant_type
DEPLOY_ACT_TYPE = IntegerZeroPointQuantizer.quant_type


@torch.no_grad()
def uniform_grid_bounds(q: FakeQuantizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(l, u) of the uniform 2^b-level grid `q` computes on: its bounds for a uniform quantizer, the mapped grid for
    the integer-grid types. A method that swaps such a quantizer for another uniform-grid type (AdaRound's learned
    rounding) gives the new one these bounds, so the deploy scope's weights keep zero point 0."""
    if isinstance(q, _IntegerGridQuantizer):
        glo, ghi, _, _ = q.grid_bounds(q.lower.detach(), q.upper.detach())
        return glo.clone(), ghi.clone()
    return q.bounds()
