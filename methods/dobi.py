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

The search is vectorised over candidates and chunked over both candidates and elements, so memory stays
bounded on the 50M-element attention maps (2048 x 6 x 64 x 64) of the paper's calibration batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from bench.quant.quantizer import ACT_GELU, ACT_SOFTMAX, FakeQuantizer, levels
from methods.base import RangeRuleMethod
from methods.registry import register_method

ONE_SIDED_KINDS = (ACT_SOFTMAX, ACT_GELU)
_MIN_STEP = 1e-12          # same guard as the quantizer's forward (zero-width candidate)
_WORK_ELEMENTS = 1 << 20   # candidates x elements evaluated at once (4 MB of float32: cache-friendly on CPU)


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
            q.sub_(xe)
            sums[c0:c0 + cand_chunk] += q.double().square_().sum(dim=1)  # exact squares
    return sums


def pick(losses: torch.Tensor, ties_to_later: bool) -> int:
    """Index of the minimal loss: the last one among equal minima (paper, <=) or the first (code, <)."""
    best = losses.min()
    hits = torch.nonzero(losses == best).flatten()
    return int(hits[-1] if ties_to_later else hits[0])


def dobi_search(x: torch.Tensor, bits: int, K: int = 100, variant: str = "paper",
                one_sided: bool = False) -> tuple[float, float]:
    """DOBI bounds of one tensor (see module docstring)."""
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

    @dataclass(frozen=True)
    class Params:
        variant: Literal["paper", "code"] = "paper"
        K: int = 100

        def __post_init__(self) -> None:
            if self.K < 1:
                raise ValueError(f"K={self.K} must be >= 1 (number of search steps)")

    def one_sided(self, quantizer: FakeQuantizer) -> bool:
        return self.params.variant == "paper" and quantizer.kind in ONE_SIDED_KINDS

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[float, float]:
        return dobi_search(x, quantizer.bits, self.params.K, self.params.variant, self.one_sided(quantizer))
