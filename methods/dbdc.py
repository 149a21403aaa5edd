"""DBDC (density-based dual clipping), PTQ4SR stage 1, as a pure range rule (spec §4.4).

Kept separate from the method so the rule can be tested against an independent histogram
implementation and reused by other methods. The histogram is read off the core's sorted view
(bench.quant.range_search.histogram_counts: numpy.histogram's bins, exactly); tests/test_ptq4sr.py checks the rule
against numpy.histogram and a plain loop.

Rule for one activation tensor:
  * 2048-bin histogram between min and max;
  * starting from the full bin range [lo, hi], while the mass inside is > (1 - p) * numel, drop the
    end bin with the smaller count (count[lo] < count[hi] -> lo += 1, else hi -= 1);
  * l = min + w * (lo + 1), u = min + w * (hi + 1), w = (max - min) / 2048.

The lower bound sits on the *upper* edge of the first kept bin: a quirk of the released PTQ4SR
code, kept on purpose (so even with nothing dropped, l = min + w).

Paper / official code / this project: follows the released PTQ4SR code (spec §4.4, D16), not the yml: the clipped
mass is 1e-4 below 8 bits and 1e-5 at 8 bits (the yml's `percentile`, e.g. 5e-4 at W4A4, is never read by the
code), and the lower bound keeps the code's quirk (upper edge of the first kept bin). The quirk moves l by one bin
width, (max - min) / 2048, at most; its PSNR effect was not measured.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.quant.range_search import cached_sorted_view, histogram_counts

DBDC_BINS = 2048


def dbdc_mass(bits: int) -> float:
    """The clipped mass p actually used by the released code: 1e-4 below 8 bits, 1e-5 at 8 bits.

    (The yml key `percentile` is never passed to the quantizer, spec D16.)
    """
    return 1e-4 if bits < 8 else 1e-5


def shrink_bins(counts: list[int], p: float) -> tuple[int, int]:
    """Greedy dual clipping on a histogram: the kept bin range (lo, hi), inclusive.

    Stops before the range would become empty (lo == hi), which the released code does not guard;
    it only matters for tensors whose mass sits in a single bin.
    """
    total = sum(counts)
    keep = (1.0 - p) * total
    lo, hi = 0, len(counts) - 1
    inside = total
    while inside > keep and lo < hi:
        if counts[lo] < counts[hi]:
            inside -= counts[lo]
            lo += 1
        else:
            inside -= counts[hi]
            hi -= 1
    return lo, hi


@dataclass(frozen=True)
class DBDCRange:
    lower: float
    upper: float
    lo_bin: int
    hi_bin: int


def dbdc_range(x: torch.Tensor, p: float, bins: int = DBDC_BINS) -> DBDCRange:
    """DBDC bounds of one activation tensor (see module docstring)."""
    view = cached_sorted_view(x)
    low, high = float(view.values[0, 0]), float(view.values[0, -1])
    if not high > low:  # constant tensor: nothing to clip; the quantizer handles the degenerate range
        return DBDCRange(low, high, 0, bins - 1)
    counts = histogram_counts(view, bins, low, high).tolist()
    lo, hi = shrink_bins(counts, p)
    width = (high - low) / bins
    return DBDCRange(low + width * (lo + 1), low + width * (hi + 1), lo, hi)


class RunningMean:
    """Cumulative mean of per-batch bounds: the first batch initialises, update k weighs 1/(k+1)."""

    def __init__(self) -> None:
        self.count = 0
        self.lower = 0.0
        self.upper = 0.0

    def update(self, lower: float, upper: float) -> None:
        self.count += 1
        self.lower += (lower - self.lower) / self.count
        self.upper += (upper - self.upper) / self.count
