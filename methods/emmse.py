"""EMMSE, implemented as EMA-MSE (MQBench-style `EMAMSEObserver`), spec §4.3 option (b).

Neither the 2DQuant paper nor its code defines "EMMSE" (spec D15); this project's definition is:
  * per tensor, with m = min(v), M = max(v): candidates (a_i * m, a_i * M), a_i = 1 - 0.01 i,
    i = 0..94 (95 candidates; 80 for per-channel weight quantizers, as MQBench's per-channel variant);
  * each candidate is turned into standard affine quantization parameters with an integer zero-point
    (PyTorch/MQBench `_calculate_qparams`: the range is first extended to include 0, scale =
    (max(M', 0) - min(m', 0)) / (2^b - 1) (at least float32 eps), zero_point = clamp(-round(min(m', 0) / scale),
    0, 2^b - 1)) and scored by mean |Q(v) - v|^2 with Q = torch.fake_quantize_per_tensor_affine;
  * the first candidate with the lowest score wins (strict <);
  * across calibration batches the chosen (min, max) are combined by an EMA, 0.9 * old + 0.1 * new (the
    first batch initialises). With the single-batch protocol of spec §3.1 the EMA is a no-op; `chunk` > 0
    splits the calibration batch into batches of `chunk` samples to make it act;
  * the quantizer gets the bounds of that affine grid: l = -zero_point * scale, u = (2^b - 1 - zero_point) * scale,
    so 0 is exactly representable (unlike DOBI's real-valued bounds).
It differs from DOBI by shrinking both ends toward 0 by a common factor and by the integer zero-point.
The scores come from the core's sorted range search (bench.quant.range_search, exact sums with the fake-quant's own
float32 rounding; all output channels of a per-channel weight at once), or with `search="brute"` from every
candidate on every element (the test oracle); both give the same candidate.

Paper / official code / this project: "EMMSE" is defined neither in the 2DQuant paper nor in its code (spec §4.3,
D15); this project follows MQBench's EMAMSEObserver (the nearest established definition, its code read for the
candidate set, the integer zero point and the EMA), so its numbers are this project's definition, not a
reproduction of the paper's EMMSE row; there is no official code to measure a difference against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext
from bench.quant.quantizer import FakeQuantizer, levels
from bench.quant.range_search import SortedView, affine_errors, cached_sorted_view, sorted_view
from methods.base import PTQMethod, set_weight_bounds
from methods.registry import register_method

PER_TENSOR_CANDIDATES = 95
PER_CHANNEL_CANDIDATES = 80
EMA_DECAY = 0.9
_WORK_ELEMENTS = 1 << 20  # candidates x elements evaluated at once


def affine_qparams(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero_point int32) of PyTorch's per-tensor-affine observer for ranges [lo, hi]."""
    quant_max = levels(bits)
    lo_neg = torch.clamp(lo, max=0.0)
    hi_pos = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi_pos - lo_neg) / float(quant_max), min=torch.finfo(torch.float32).eps)
    zero_point = torch.clamp(-torch.round(lo_neg / scale).to(torch.int32), 0, quant_max)
    return scale, zero_point.to(torch.int32)


def affine_bounds(lo: float, hi: float, bits: int) -> tuple[float, float]:
    """The (l, u) of the two-bound quantizer that reproduce the affine grid of range [lo, hi]."""
    scale, zero_point = affine_qparams(torch.tensor(lo), torch.tensor(hi), bits)
    s, z = float(scale), int(zero_point)
    return -z * s, (levels(bits) - z) * s


def candidate_ranges(m: float, M: float, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_i * m, a_i * M) for a_i = 1 - 0.01 i, i < count, in float32 as MQBench computes them."""
    alpha = torch.tensor([1.0 - i * 0.01 for i in range(count)], dtype=torch.float32)
    return torch.tensor(m, dtype=torch.float32) * alpha, torch.tensor(M, dtype=torch.float32) * alpha


def mse_scores(x: torch.Tensor, lows: torch.Tensor, highs: torch.Tensor, bits: int,
               work: int = _WORK_ELEMENTS) -> torch.Tensor:
    """mean (Q(x) - x)^2 (squares and sums in float64) for each candidate range, all candidates at once."""
    flat = x.detach().reshape(-1).float()
    scale, zero_point = affine_qparams(lows.to(flat.device), highs.to(flat.device), bits)
    count = lows.numel()
    sums = torch.zeros(count, dtype=torch.float64, device=flat.device)
    cand_chunk = max(1, min(count, work // max(1, min(flat.numel(), work))))
    elem_chunk = max(1, work // cand_chunk)
    for c0 in range(0, count, cand_chunk):
        s = scale[c0:c0 + cand_chunk, None]
        inv = 1.0 / s
        z = zero_point[c0:c0 + cand_chunk, None].float()
        for e0 in range(0, flat.numel(), elem_chunk):
            xe = flat[e0:e0 + elem_chunk]
            # torch.fake_quantize_per_tensor_affine's arithmetic, for all candidates at once (several times
            # faster than its per-channel kernel): (clamp(round(x * (1/s)) + z, 0, N) - z) * s
            err = torch.round(xe * inv).add_(z).clamp_(0, levels(bits)).sub_(z).mul_(s)
            # exact differences and squares: both are float32, so the float64 difference is exact
            sums[c0:c0 + cand_chunk] += err.double().sub_(xe.double()).square_().sum(dim=1)
    return sums / flat.numel()


def mse_range_rows(view: SortedView, bits: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`mse_range` of every row of a sorted view (a tensor, or each output channel): float32 (R,) each."""
    m = torch.from_numpy(view.values[:, :1].copy())
    M = torch.from_numpy(view.values[:, -1:].copy())
    alpha = torch.tensor([1.0 - i * 0.01 for i in range(count)], dtype=torch.float32)
    lows, highs = m * alpha, M * alpha                       # (R, C), as candidate_ranges
    scale, zero_point = affine_qparams(lows, highs, bits)
    scores = affine_errors(view, scale.numpy(), zero_point.numpy(), bits) / view.n
    best = np.argmin(scores, axis=1)  # first minimum, as MQBench's strict <
    rows = np.arange(view.rows)
    return lows.numpy()[rows, best], highs.numpy()[rows, best]


def mse_range(x: torch.Tensor, bits: int, count: int = PER_TENSOR_CANDIDATES,
              search: str = "sorted") -> tuple[float, float]:
    """The candidate (min, max) with the lowest MSE (first one on ties), before the affine rounding."""
    if search == "sorted":
        lo, hi = mse_range_rows(cached_sorted_view(x), bits, count)
        return float(lo[0]), float(hi[0])
    lower, upper = torch.aminmax(x.detach())
    lows, highs = candidate_ranges(float(lower), float(upper), count)
    scores = mse_scores(x, lows, highs, bits)
    best = int(torch.argmin(scores))  # first minimum, as MQBench's strict <
    return float(lows[best]), float(highs[best])


@register_method("emmse")
class EMMSE(PTQMethod):
    """EMA-MSE (MQBench-style): per-tensor MSE search over shrunk (a*min, a*max), integer zero-point, EMA 0.9."""

    @dataclass(frozen=True)
    class Params:
        chunk: int = 0  # 0 = the whole calibration batch in one pass (EMA no-op); k > 0 = batches of k samples
        search: Literal["sorted", "brute"] = "sorted"  # same bounds; brute = every candidate on every element

        def __post_init__(self) -> None:
            if self.chunk < 0:
                raise ValueError(f"chunk={self.chunk} must be >= 0")

    def weight_range(self, w: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        count = PER_CHANNEL_CANDIDATES if quantizer.per_channel else PER_TENSOR_CANDIDATES
        return affine_bounds(*mse_range(w, quantizer.bits, count, self.params.search), quantizer.bits)

    def weight_range_per_channel(self, w: torch.Tensor, quantizer: FakeQuantizer):
        """Every output channel in one sorted search (the same bounds as `weight_range` channel by channel)."""
        if self.params.search != "sorted":
            return None
        lows, highs = mse_range_rows(sorted_view(w, quantizer.per_channel_axis), quantizer.bits, PER_CHANNEL_CANDIDATES)
        pairs = [affine_bounds(float(lo), float(hi), quantizer.bits) for lo, hi in zip(lows, highs)]
        return (torch.tensor([lo for lo, _ in pairs], dtype=torch.float64),
                torch.tensor([hi for _, hi in pairs], dtype=torch.float64))

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        set_weight_bounds(qmodel, self.weight_range, channel_rule=self.weight_range_per_channel)
        running: dict[str, tuple[float, float]] = {}

        def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            lo, hi = mse_range(x, q.bits, search=self.params.search)
            if name in running:  # EMA across batches; the first batch initialises
                old_lo, old_hi = running[name]
                lo, hi = EMA_DECAY * old_lo + (1 - EMA_DECAY) * lo, EMA_DECAY * old_hi + (1 - EMA_DECAY) * hi
            running[name] = (lo, hi)

        capture_activations(qmodel, ctx.require_batch(), observe, chunk=self.params.chunk or None)
        for name, q in qmodel.named_modules():
            if isinstance(q, FakeQuantizer) and name in running:
                q.set_bounds(*affine_bounds(*running[name], q.bits))
