"""DOBI, distribution-oriented bound initialization (2DQuant stage 1, spec §4.5).

For each quantizer independently, over a 1-D grid of candidate bounds, pick the (l, u) minimising the
L2 norm ||v - Q(v; l, u)|| (Q = the fake quantizer of spec §2.3; computed as a float64 sum of squares,
whose argmin is the same) on the full calibration tensor (activations) or the weight tensor.

With m = min(v), M = max(v), R = M - m and K = 100 (`K`):
  * two-sided ("bell-shaped"): l_i = m + i*R/(2K), u_i = M - i*R/(2K);
  * one-sided ("exponential"): l = m, u_i = M - i*R/(2K)   [paper; code: step R/K, never enabled].
Variants (spec D1/D2; default "paper", recorded in results):
  * variant="paper": i = 0..K (K + 1 candidates), ties go to the later candidate (<=); one-sided search for
    the post-softmax attention map and the post-GELU fc2 input (quantizer kinds act_softmax/act_gelu),
    two-sided for everything else;
  * variant="code": i = 0..K-1 (K candidates), strict < (first minimum wins), two-sided for all quantizers.
At i = K the paper's two-sided candidate is the zero-width range l = u = m + R/2 (the quantizer then outputs
that constant); it is kept as a candidate for fidelity and in practice never wins.

The loss of every candidate is ||v - Q(v)||^2 with exact (float64) differences and sums. Three searches
compute it (`search`, recorded in results). On the tests' tensors and on the 384 quantizers of shipped
SwinIR-light x2, the first two pick brute force's bounds, or bounds whose error is within 1e-12 relative of
brute force's minimum (tests/test_range_search.py):
  * "stream" (default): the grid depends only on min(v) and max(v), so the first float32 value of every level of
    every candidate is known before the data is read (`range_search.level_thresholds`); one pass over the tensor
    then counts and sums the values between those thresholds (bench.quant.bin_sums, numba), split over all of
    the process's threads. Tensors of at most 65,536 values, and per-channel weights, use the sorted engine;
    without numba everything does;
  * "sorted": the core's range-search engine (bench.quant.range_search) sorts the tensor once and
    evaluates each candidate in O(2^b log n) with the quantizer's own float32 rounding; per-channel weights are
    searched all channels at once;
  * "brute": every candidate on every element, vectorised over candidates and chunked over candidates and
    elements (bounded memory on the 50M-element attention maps); the engine's test oracle.

Paper / official code / this project: both sides are variants (spec §4.5, D1-D3): `variant=paper` (default; K + 1
candidates, ties to the later one, one-sided for the post-softmax map and the post-GELU fc2 input, the paper's
hand-made "is it symmetric?" decision turned into a rule by quantizer kind) and `variant=code` (the released code:
K candidates, strict <, two-sided everywhere). The objective's argmin equals the code's (un-squared L2 norm).
Measured, shipped SwinIR-light x2, W4A4, Set5, the default calibration (32 patches of 64x64): paper 35.149 dB /
SSIM 0.9448, code 35.141 dB / 0.9448 (`bench eval --method dobi --method-param variant=...`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from bench.quant.quantizer import ACT_GELU, ACT_SOFTMAX, FakeQuantizer, levels
from bench.quant.range_search import (
                                      SortedView,
                                      cached_result,
                                      cached_sorted_view,
                                      sorted_view,
                                      streamable,
                                      streamed_tensor,
                                      two_bound_errors,
                                      two_bound_errors_streamed,
)
from methods.base import RangeRuleMethod
from methods.registry import register_method

ONE_SIDED_KINDS = (ACT_SOFTMAX, ACT_GELU)
_MIN_STEP = 1e-12          # same guard as the quantizer's forward (zero-width candidate)
_WORK_ELEMENTS = 1 << 20   # candidates x elements evaluated at once (4 MB of float32: cache-friendly on CPU)
_STREAM_MIN_ELEMENTS = 1 << 16  # smaller tensors: the sorted engine is as fast, without the pass's fixed costs


@dataclass(frozen=True)
class Grid:
    lowers: torch.Tensor  # float32 (C,)
    uppers: torch.Tensor  # float32 (C,)


def dobi_grid(m: float, M: float, K: int, variant: str, one_sided: bool) -> Grid:
    """The candidate bounds, in search order (float64 arithmetic, stored as float32 like the bounds)."""
    count = K + 1 if variant == "paper" else K
    i = torch.arange(count, dtype=torch.float64)
    R = M - m
    if one_sided:
        step = R / (2 * K) if variant == "paper" else R / K
        lowers = torch.full_like(i, m)
        uppers = M - i * step
    else:
        step = R / (2 * K)
        lowers = m + i * step
        uppers = M - i * step
    lowers, uppers = lowers.float(), uppers.float()
    # The paper's last two-sided candidate meets in the middle; float32 must not make it cross.
    return Grid(lowers, torch.maximum(uppers, lowers))


def dobi_grid_rows(m: np.ndarray, M: np.ndarray, K: int, variant: str, one_sided: bool) -> tuple[np.ndarray, np.ndarray]:
    """`dobi_grid` for rows of (min, max) at once: (lowers, uppers) float32 (R, C), the same arithmetic."""
    count = K + 1 if variant == "paper" else K
    i = np.arange(count, dtype=np.float64)[None, :]
    m, M = np.asarray(m, dtype=np.float64)[:, None], np.asarray(M, dtype=np.float64)[:, None]
    R = M - m
    if one_sided:
        step = R / (2 * K) if variant == "paper" else R / K
        lowers = np.broadcast_to(m, (m.shape[0], count))
        uppers = M - i * step
    else:
        step = R / (2 * K)
        lowers = m + i * step
        uppers = M - i * step
    lowers, uppers = lowers.astype(np.float32), uppers.astype(np.float32)
    return lowers, np.maximum(uppers, lowers)


def grid_sq_errors(x: torch.Tensor, grid: Grid, bits: int, work: int = _WORK_ELEMENTS) -> torch.Tensor:
    """float64 sum over x of (x - Q(x; l_c, u_c))^2 for every candidate c (same arithmetic as the quantizer)."""
    flat = x.detach().reshape(-1).float()
    n_levels = levels(bits)
    lowers, uppers = grid.lowers.to(flat.device), grid.uppers.to(flat.device)
    steps = torch.clamp((uppers - lowers) / n_levels, min=_MIN_STEP)
    count = lowers.numel()
    sums = torch.zeros(count, dtype=torch.float64, device=flat.device)
    cand_chunk = max(1, min(count, work // max(1, min(flat.numel(), work))))
    elem_chunk = max(1, work // cand_chunk)
    for c0 in range(0, count, cand_chunk):
        lo = lowers[c0:c0 + cand_chunk, None]
        hi = uppers[c0:c0 + cand_chunk, None]
        step = steps[c0:c0 + cand_chunk, None]
        for e0 in range(0, flat.numel(), elem_chunk):
            xe = flat[e0:e0 + elem_chunk]
            q = torch.minimum(torch.maximum(xe, lo), hi)       # clip
            q.sub_(lo).div_(step).round_().mul_(step).add_(lo)  # step * round((v_c - l) / step) + l
            # exact differences and squares: q and x are float32, so q - x is exact in float64
            sums[c0:c0 + cand_chunk] += q.double().sub_(xe.double()).square_().sum(dim=1)
    return sums


def pick(losses: torch.Tensor | np.ndarray, ties_to_later: bool) -> int:
    """Index of the minimal loss: the last one among equal minima (paper, <=) or the first (code, <)."""
    losses = losses.cpu().numpy() if isinstance(losses, torch.Tensor) else np.asarray(losses)
    hits = np.flatnonzero(losses == losses.min())
    return int(hits[-1] if ties_to_later else hits[0])


def search_rows(view: SortedView, bits: int, K: int, variant: str, one_sided: bool) -> tuple[np.ndarray, np.ndarray]:
    """DOBI bounds of every row of a sorted view (one row per tensor, or per output channel): float32 (R,)."""
    m, M = view.values[:, 0], view.values[:, -1]
    lowers, uppers = dobi_grid_rows(m, M, K, variant, one_sided)
    losses = two_bound_errors(view, lowers, uppers, bits)
    best = np.array([pick(row, ties_to_later=variant == "paper") for row in losses])
    rows = np.arange(view.rows)
    lower, upper = lowers[rows, best], uppers[rows, best]
    constant = ~(M > m)  # constant row: nothing to search
    return np.where(constant, m, lower), np.where(constant, M, upper)


def streamed_search(x: torch.Tensor, bits: int, K: int, variant: str,
                    one_sided: bool) -> tuple[float, float] | None:
    """DOBI bounds from one pass over x that puts every value into the candidates' level bins (no sort); None
    when x is empty or holds an inf or a NaN. Split over all of the process's torch threads."""
    threads = torch.get_num_threads()
    t = streamed_tensor(x)
    if t is None:
        return None
    m, M = t.minimum, t.maximum
    if not M > m:  # constant tensor: nothing to search
        return m, M
    lowers, uppers = dobi_grid_rows(np.array([m]), np.array([M]), K, variant, one_sided)
    losses = two_bound_errors_streamed(t, lowers[0], uppers[0], bits, threads)
    index = pick(losses, ties_to_later=variant == "paper")
    return float(lowers[0, index]), float(uppers[0, index])


def _not_finite(x: torch.Tensor) -> ValueError:
    bad = int((~torch.isfinite(x.detach())).sum())
    return ValueError(f"DOBI cannot search bounds of a tensor holding NaN or inf ({bad} of {x.numel()} values, "
                      f"shape {tuple(x.shape)}): check the model's FP output on the calibration batch")


def dobi_search(x: torch.Tensor, bits: int, K: int = 100, variant: str = "paper",
                one_sided: bool = False, search: str = "stream") -> tuple[float, float]:
    """DOBI bounds of one tensor (see module docstring); ValueError when x holds a NaN or an inf."""
    if search == "stream" and streamable() and x.numel() > _STREAM_MIN_ELEMENTS:
        # q, k and v have one input tensor and the same quantizer settings: one pass serves the three
        bounds = cached_result(x, ("dobi", bits, K, variant, one_sided),
                               lambda: streamed_search(x, bits, K, variant, one_sided))
        if bounds is None:
            raise _not_finite(x)
        return bounds
    if not bool(torch.isfinite(x.detach()).all()):
        raise _not_finite(x)
    if search in ("sorted", "stream"):
        lower, upper = search_rows(cached_sorted_view(x), bits, K, variant, one_sided)
        return float(lower[0]), float(upper[0])
    lower, upper = torch.aminmax(x.detach())
    m, M = float(lower), float(upper)
    if not M > m:  # constant tensor: nothing to search
        return m, M
    grid = dobi_grid(m, M, K, variant, one_sided)
    index = pick(grid_sq_errors(x, grid, bits), ties_to_later=variant == "paper")
    return float(grid.lowers[index]), float(grid.uppers[index])


@register_method("dobi")
class DOBI(RangeRuleMethod):
    """2DQuant stage 1: grid search of (l, u) minimising ||v - Q(v)||, two-/one-sided (paper or code variant)."""

    thread_safe_range = True  # numpy/torch on its arguments only; the sorted-view cache is thread-safe

    @dataclass(frozen=True)
    class Params:
        variant: Literal["paper", "code"] = "paper"
        K: int = 100
        search: Literal["stream", "sorted", "brute"] = "stream"  # same bounds by three computations (docstring)

        def __post_init__(self) -> None:
            if self.K < 1:
                raise ValueError(f"K={self.K} must be >= 1 (number of search steps)")

    def rule_workers(self) -> int:
        # The streamed pass splits each tensor over all of the process's threads itself, and costs less than the
        # forward: run it between the forward's layers, with the forward on every thread (speed.md, item 7).
        return 0 if self.params.search == "stream" and streamable() else super().rule_workers()

    def one_sided(self, quantizer: FakeQuantizer) -> bool:
        return self.params.variant == "paper" and quantizer.kind in ONE_SIDED_KINDS

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        p = self.params
        return dobi_search(x, quantizer.bits, p.K, p.variant, self.one_sided(quantizer), p.search)

    def weight_range_per_channel(self, w: torch.Tensor, quantizer: FakeQuantizer):
        """All output channels in one search (the same bounds as channel by channel)."""
        p = self.params
        if p.search == "brute":
            return None
        view = sorted_view(w, quantizer.per_channel_axis)
        lower, upper = search_rows(view, quantizer.bits, p.K, p.variant, self.one_sided(quantizer))
        return torch.from_numpy(lower.astype(np.float64)), torch.from_numpy(upper.astype(np.float64))
