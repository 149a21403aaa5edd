"""Exact range search on a sorted view of a tensor: the quantization error of every candidate in O(2^b log n).

Sort the values once (per tensor, or per row for per-channel weights). A quantizer maps every element to one of
its levels c_0 < ... < c_N through a rounding index idx(v) that is monotone in v, so the elements of level j are
one contiguous run [p_j, p_{j+1}) of the sorted view, and p_j is found by bisection with the quantizer's *own*
float32 arithmetic (not an idealised midpoint): the engine reproduces the brute-force assignment element for
element. With d = v - mu (mu a central value of the row: its mean, or its median for large rows) and float64 block
prefix sums S1 of d,

    ||v - Q(v)||^2 = sum_j sum_{i in bin j} (d_i - c'_j)^2 = S2 + sum_j (n_j c'_j^2 - 2 c'_j (S1[p_{j+1}] - S1[p_j])),

with c'_j = c_j - mu and S2 = sum d^2. Only S2 and the S1 differences are data sums: the S2 terms of the bins
telescope into the total, so their rounding does not add up per bin, and the remaining terms are combined in
extended precision (numpy longdouble). Centering removes the cancellation that raw sums of v would have for
data far from 0. Relative agreement with an exact float64 brute force is ~1e-13 (tests: `tests/test_range_search.py`).

Two rounding rules are provided, each the exact float32 arithmetic of a quantizer of this project:
  * `two_bound_errors`: spec §2.3 (l, u real-valued; s = (u - l) / N; v_q = s * round((clip(v) - l) / s) + l);
  * `affine_errors`: PyTorch's fake_quantize_per_tensor_affine with an integer zero-point (EMMSE's grid).
The same view gives exact quantiles (`quantile_linear`) and numpy-equal histograms (`histogram_counts`).

Streamed errors, without a sort (`two_bound_errors_streamed`): when the candidates are known before the data is
read, the bin boundaries above are values, not positions: `level_thresholds` finds, for every candidate and level,
the smallest float32 whose rounding index reaches that level (bisection on the float32 order with the same
rounding expression), and one pass over the tensor (`bench.quant.bin_sums`) counts and sums the values between
those thresholds. The counts are the sorted engine's positions exactly; the sums are compensated, and the errors
agree with brute force to ~1e-12 relative or better.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from bench.quant import bin_sums as _bin_sums

_BLOCK = 64            # elements per block of the prefix sums (partial blocks are summed on demand)
_CHUNK = 1 << 16       # elements converted to float64 at a time (512 kB: the chunk stays in L2 for its 3 passes)
_MIN_STEP = np.float32(1e-12)  # the quantizer's guard on a zero-width range (bench.quant.quantizer._MIN_STEP)
_LD = np.longdouble
_FULL_PREFIX_LIMIT = 1 << 16  # up to this many elements per row, prefix sums at every position


@dataclass
class SortedView:
    """Rows of values sorted ascending, with the sums the error formula needs.

    values: float32 (R, n), each row sorted. center: float64 (R,) a central value of each row (the mean of
    small rows, the median of large ones). sq_total: longdouble (R,) sum of
    (v - center)^2. block_prefix: longdouble (R, nb + 1), the prefix sums of (v - center) at block starts.
    """
    values: np.ndarray
    center: np.ndarray
    sq_total: np.ndarray
    block_prefix: np.ndarray
    block: int = _BLOCK

    @property
    def rows(self) -> int:
        return self.values.shape[0]

    @property
    def n(self) -> int:
        return self.values.shape[1]

    def prefix(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """sum_{i < p} (v[r, i] - center[r]) for each (r, p), in longdouble (rows/positions broadcast together)."""
        rows, positions = np.broadcast_arrays(rows, positions)
        flat_r, flat_p = rows.reshape(-1), positions.reshape(-1)
        if self.block == 1:
            return self.block_prefix[flat_r, flat_p].reshape(rows.shape)
        block, rem = np.divmod(flat_p, self.block)
        result = self.block_prefix[flat_r, block]
        partial = rem > 0
        if partial.any():
            r, b, k = flat_r[partial], block[partial], rem[partial]
            offsets = np.arange(self.block)
            cols = np.minimum(b[:, None] * self.block + offsets[None, :], self.n - 1)
            d = self.values[r[:, None], cols].astype(np.float64) - self.center[r][:, None]
            d[offsets[None, :] >= k[:, None]] = 0.0
            result[partial] += d.sum(axis=1)
        return result.reshape(rows.shape)

    def first_true(self, rows: np.ndarray, predicate: Callable[[np.ndarray], np.ndarray], shape: tuple) -> np.ndarray:
        """For queries of `shape` (rows broadcast to it), the first index i of the row where predicate is true.

        `predicate(values)` gets float32 values of the queries' shape and must be monotone along each row
        (false ... false true ... true). Returns n where it is never true. Vectorised bisection: log2(n + 1)
        gathers of one value per query.
        """
        rows = np.broadcast_to(rows, shape)
        lo = np.zeros(shape, dtype=np.int64)
        hi = np.full(shape, self.n, dtype=np.int64)
        for _ in range(int(self.n).bit_length()):
            mid = (lo + hi) >> 1
            true = predicate(self.values[rows, np.minimum(mid, self.n - 1)])
            searching = lo < hi
            hi = np.where(searching & true, mid, hi)
            lo = np.where(searching & ~true, mid + 1, lo)
        return lo


def _sorted_rows(x: torch.Tensor, axis: int | None) -> np.ndarray:
    """x as rows (one, or one per index of `axis`), each sorted ascending, in a new float32 array."""
    t = x.detach()
    if t.device.type != "cpu" or t.dtype != torch.float32:
        t = t.to("cpu", torch.float32)
    rows = t.reshape(1, -1) if axis is None else t.movedim(axis, 0).reshape(t.shape[axis], -1)
    values = rows.numpy()
    if rows.data_ptr() == t.data_ptr():  # a view of x's memory: sort a copy (np.sort), never x itself
        return np.sort(values, axis=1)  # numpy's SIMD sort: ~10x torch.sort on CPU
    values.sort(axis=1)  # the reshape already copied (a strided x such as SwinIR's k^T): sort that copy in place
    return values


def sorted_view(x: torch.Tensor, axis: int | None = None) -> SortedView:
    """The sorted view of x (one row, or one row per index of `axis` for per-channel quantizers)."""
    values = _sorted_rows(x, axis)
    rows, n = values.shape
    if n == 0:
        raise ValueError("cannot search quantization ranges of an empty tensor")
    if n <= _FULL_PREFIX_LIMIT:  # small tensors (weights): the prefix at every position, no partial blocks
        center = values.mean(axis=1, dtype=np.float64)
        d = values.astype(np.float64) - center[:, None]
        prefix = np.zeros((rows, n + 1), dtype=_LD)
        np.cumsum(d.astype(_LD), axis=1, out=prefix[:, 1:])
        return SortedView(values, center, (d * d).sum(axis=1).astype(_LD), prefix, block=1)
    # Large rows: float64 sums of d = v - center, chunk by chunk with torch (one promoting subtraction, a dot
    # product and a block sum per chunk, on every intra-op thread); numpy took ~7 passes on one thread.
    # Any value inside the data removes the cancellation; the median costs no pass over the data (the mean does).
    center = values[:, n // 2].astype(np.float64)
    blocks = -(-n // _BLOCK)
    block_sums = torch.zeros(rows, blocks, dtype=torch.float64)
    sq_total = np.zeros(rows, dtype=_LD)
    buffer = torch.empty(min(n, _CHUNK), dtype=torch.float64)  # reused: no allocation per chunk
    for row in range(rows):
        v = torch.from_numpy(values[row])
        c = torch.tensor([center[row]], dtype=torch.float64)  # shape (1,), not 0-dim: v - c is promoted to float64
        for start in range(0, n, _CHUNK):  # _CHUNK is a multiple of _BLOCK
            part = v[start:start + _CHUNK]
            d = torch.sub(part, c, out=buffer[:part.numel()])
            sq_total[row] += float(torch.dot(d, d))
            full = d.numel() - d.numel() % _BLOCK
            first = start // _BLOCK
            torch.sum(d[:full].view(-1, _BLOCK), dim=1, out=block_sums[row, first:first + full // _BLOCK])
            if full < d.numel():  # the row's last, partial block
                block_sums[row, -1] = d[full:].sum()
    block_prefix = np.zeros((rows, blocks + 1), dtype=_LD)
    np.cumsum(block_sums.numpy().astype(_LD), axis=1, out=block_prefix[:, 1:])
    return SortedView(values, center, sq_total, block_prefix)


# ------------------------------------------------------------------------------------------ errors

def _errors_from_bins(view: SortedView, rows: np.ndarray, starts: np.ndarray, level_values: np.ndarray) -> np.ndarray:
    """sum_j sum_{bin j} (v - c_j)^2 per candidate; starts (R, C, L) = first index of each level's bin."""
    R, C, L = starts.shape
    bounds = np.concatenate([starts, np.full((R, C, 1), view.n, dtype=np.int64)], axis=2)  # (R, C, L + 1)
    sums = view.prefix(rows[:, None, None], bounds)                                          # longdouble
    return _errors_from_sums(np.diff(bounds, axis=2), np.diff(sums, axis=2), level_values,
                             view.center[:, None, None], view.sq_total[:, None])


def _errors_from_sums(counts: np.ndarray, bin_sums: np.ndarray, level_values: np.ndarray, center: np.ndarray,
                      sq_total: np.ndarray) -> np.ndarray:
    """sq_total + sum_j (n_j c_j^2 - 2 c_j S1_j) with c_j = level_j - center: (R, C, L) bins -> (R, C) float64."""
    c = level_values.astype(_LD) - center.astype(_LD)
    total = sq_total + (counts.astype(_LD) * c * c - 2 * c * bin_sums).sum(axis=2)
    return np.maximum(total, 0).astype(np.float64)


def _level_starts(view: SortedView, index_of: Callable[[np.ndarray], np.ndarray], R: int, C: int,
                  L: int) -> np.ndarray:
    """First sorted index whose rounding index is >= k, for k = 0..L-1 (k = 0: the row start)."""
    k = np.arange(1, L, dtype=np.float32)
    starts = view.first_true(np.arange(R)[:, None, None], lambda values: index_of(values) >= k, (R, C, L - 1))
    return np.concatenate([np.zeros((R, C, 1), dtype=np.int64), starts], axis=2)


def _float32(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32))


def _two_bound_rounding(lowers, uppers, bits: int):
    """The quantizer's float32 (lowers, uppers, steps, levels) of candidates (R, C), and its rounding index."""
    lo_t, hi_t = _float32(lowers), _float32(uppers)
    n_levels = 2 ** bits - 1
    # Step and levels with the quantizer's own torch expressions (bench.quant.quantizer.fake_quantize).
    step_t = torch.clamp((hi_t - lo_t) / n_levels, min=float(_MIN_STEP))
    j = torch.arange(n_levels + 1, dtype=torch.float32)
    levels = (step_t[:, :, None] * j + lo_t[:, :, None]).numpy()
    lo, hi, s = lo_t.numpy()[:, :, None], hi_t.numpy()[:, :, None], step_t.numpy()[:, :, None]

    def index_of(values: np.ndarray) -> np.ndarray:
        return np.rint((np.minimum(np.maximum(values, lo), hi) - lo) / s)    # round half to even, float32

    return lo, hi, levels, index_of


def two_bound_errors(view: SortedView, lowers, uppers, bits: int) -> np.ndarray:
    """||v - Q(v; l, u)||^2 (float64, exact sums) of spec §2.3 for every candidate: lowers/uppers (R, C) float32."""
    lowers = np.asarray(lowers, dtype=np.float32).reshape(view.rows, -1)
    uppers = np.asarray(uppers, dtype=np.float32).reshape(view.rows, -1)
    _, _, levels, index_of = _two_bound_rounding(lowers, uppers, bits)
    R, C = lowers.shape
    starts = _level_starts(view, index_of, R, C, 2 ** bits)
    return _errors_from_bins(view, np.arange(R), starts, levels)


# ------------------------------------------------------------------------------ streamed (no sort)

def _order_keys(x: np.ndarray) -> np.ndarray:
    """int64 keys with the order of float32 x (-0.0 and 0.0 share key 0); `_from_order_keys` inverts it."""
    bits = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _from_order_keys(keys: np.ndarray) -> np.ndarray:
    bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def level_thresholds(index_of: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray,
                     L: int) -> np.ndarray:
    """For k = 1..L-1, the smallest float32 t with index_of(t) >= k (+inf where no float32 reaches k).

    index_of must be monotone in v and 0 at v <= lo; lo/hi (R, C, 1) float32 candidate bounds (values above hi
    round like hi). A float32 v has index >= k exactly when v >= t, so the elements of level k-1 and below
    are the v < t: the sorted engine's bin boundaries, found without the data. Bisection on the float32
    order: at most 32 steps of one index_of call on (R, C, L - 1) values."""
    k = np.arange(1, L, dtype=np.float32)
    shape = np.broadcast_shapes(lo.shape[:-1] + (L - 1,), hi.shape[:-1] + (L - 1,))
    below = np.broadcast_to(_order_keys(lo), shape).copy()   # index_of(lo) = 0 < k: below the threshold
    top = np.broadcast_to(_order_keys(hi), shape).copy()
    reached = index_of(np.broadcast_to(_from_order_keys(top), shape)) >= k
    above = np.where(reached, top, top + 1)                   # a key whose value reaches k (top + 1: none)
    while True:
        open_ = reached & (above - below > 1)
        if not open_.any():
            break
        mid = (below + above) >> 1
        true = index_of(_from_order_keys(mid)) >= k
        above = np.where(open_ & true, mid, above)
        below = np.where(open_ & ~true, mid, below)
    return np.where(reached, _from_order_keys(above), np.float32(np.inf)).astype(np.float32)


def streamable() -> bool:
    """Whether the streamed errors can be computed here (numba installed, not switched off)."""
    return _bin_sums.available()


@dataclass(frozen=True)
class StreamedTensor:
    """A tensor's values as one flat float32 array, with its range and a float32 center (its mean)."""
    values: np.ndarray
    minimum: float
    maximum: float
    center: float


def streamed_tensor(x: torch.Tensor) -> StreamedTensor | None:
    """x's values, range and mean; None when x is empty or holds an inf or a NaN."""
    if x.numel() == 0:
        return None
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    # torch's reductions (vectorised, on the intra-op threads): 0.5 ns per value for both on 2 threads, faster
    # than a numba pass that does both; NaN propagates into min and max
    minimum, maximum = (float(v) for v in torch.aminmax(flat))
    if not (np.isfinite(minimum) and np.isfinite(maximum)):
        return None
    mean = float(flat.mean())
    values = flat.numpy()
    # The mean, rounded to float32: v - center is then exact in float64 (for |v| within 2^29 of it), and the sums
    # of it have no cancellation (the mean is inside the data; the midpoint of the range sits off the bulk of a
    # heavy tail and gave 2e-13 instead of 2e-16 relative error on a Student-t tensor).
    center = float(np.clip(np.float32(mean), np.float32(minimum), np.float32(maximum)))
    return StreamedTensor(values, minimum, maximum, center)


def _streamed_bins(t: StreamedTensor, thresholds: np.ndarray,
                   threads: int) -> tuple[np.ndarray, np.ndarray, np.longdouble]:
    """For float32 thresholds of any shape (-inf and +inf allowed): the count and the sum of (v - center) of the
    elements v < threshold, and the total sum of (v - center)^2."""
    finite = np.isfinite(thresholds)
    unique = np.unique(thresholds[finite])
    counts, sums, sq_total = _bin_sums.bin_sums(t.values, unique, t.center, threads)
    below = np.concatenate([[0], np.cumsum(counts)])                 # below[p + 1] = #(v < unique[p])
    sums_below = np.concatenate([np.zeros(1, dtype=_LD), np.cumsum(sums)])
    position = np.searchsorted(unique, np.where(finite, thresholds, 0)) + 1
    position = np.where(finite, position, np.where(thresholds > 0, unique.size + 1, 0))
    return below[position], sums_below[position], sq_total


def two_bound_errors_streamed(t: StreamedTensor, lowers, uppers, bits: int, threads: int = 1) -> np.ndarray:
    """`two_bound_errors` of one tensor's candidates (C,) without sorting it: the same float64 errors, from one
    pass over its values (`bench.quant.bin_sums`); lowers/uppers float32 (C,)."""
    lowers = np.asarray(lowers, dtype=np.float32).reshape(1, -1)
    uppers = np.asarray(uppers, dtype=np.float32).reshape(1, -1)
    lo, hi, levels, index_of = _two_bound_rounding(lowers, uppers, bits)
    C = lowers.shape[1]
    edges = np.concatenate([np.full((1, C, 1), -np.inf, dtype=np.float32),
                            level_thresholds(index_of, lo, hi, 2 ** bits),
                            np.full((1, C, 1), np.inf, dtype=np.float32)], axis=2)     # (1, C, L + 1)
    below, sums_below, sq_total = _streamed_bins(t, edges, threads)
    return _errors_from_sums(np.diff(below, axis=2), np.diff(sums_below, axis=2), levels,
                             np.array(t.center), sq_total)[0]


def affine_errors(view: SortedView, scales, zero_points, bits: int) -> np.ndarray:
    """||v - Q(v)||^2 of torch.fake_quantize_per_tensor_affine(v, s, z, 0, N) for candidates (R, C)."""
    s_t = _float32(scales).reshape(view.rows, -1)
    z_t = _float32(zero_points).reshape(view.rows, -1)
    n_levels = 2 ** bits - 1
    inverse = (1.0 / s_t).numpy()
    j = torch.arange(n_levels + 1, dtype=torch.float32)
    levels = ((j - z_t[:, :, None]) * s_t[:, :, None]).numpy()             # (q - z) * s
    zeros = z_t.numpy()
    R, C = zeros.shape

    inv, z = inverse[:, :, None], zeros[:, :, None]

    def index_of(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(values * inv) + z, 0, n_levels)

    starts = _level_starts(view, index_of, R, C, n_levels + 1)
    return _errors_from_bins(view, np.arange(R), starts, levels)


# ---------------------------------------------------------------------------------- order statistics

def _float32_ceil(t: np.ndarray) -> np.ndarray:
    """The smallest float32 >= t: for float32 v, (v < t) == (v < ceil32(t))."""
    t = np.asarray(t, dtype=np.float64)
    c = t.astype(np.float32)
    below = c.astype(np.float64) < t
    return np.where(below, np.nextafter(c, np.float32(np.inf)), c)


def count_below(view: SortedView, thresholds: np.ndarray, row: int = 0) -> np.ndarray:
    """Number of elements of the row strictly below each float64 threshold."""
    return np.searchsorted(view.values[row], _float32_ceil(thresholds), side="left")


def quantile_linear(view: SortedView, q: float, row: int = 0) -> float:
    """numpy.quantile(v, q) (method="linear", numpy's lerp), exact, from the sorted view."""
    values = view.values[row]
    n = values.size
    h = (n - 1) * q
    index = min(int(np.floor(h)), n - 1)
    below, above = float(values[index]), float(values[min(index + 1, n - 1)])
    frac = h - index
    return above - (above - below) * (1.0 - frac) if frac >= 0.5 else below + (above - below) * frac


def histogram_counts(view: SortedView, bins: int, low: float, high: float, row: int = 0) -> np.ndarray:
    """numpy.histogram(v, bins, range=(low, high)) counts (the last bin closed), from the sorted view."""
    edges = np.linspace(low, high, bins + 1)
    below = count_below(view, edges, row)
    below[-1] = np.searchsorted(view.values[row], _float32_ceil(np.nextafter(high, np.inf)), side="left")
    return np.diff(below).astype(np.int64)


# ------------------------------------------------------------------------------------- recent-views cache

class _RecentResults:
    """Results computed from the last few tensors seen: SwinIR's q, k and v quantizers share one input tensor,
    so its sorted view (or a rule's whole result) is computed once for the three.

    Thread-safe (a capture may run range rules on worker threads): concurrent calls on one key compute it once,
    the others wait for that result. Each tensor is held while cached, so its storage cannot be reused by another
    tensor with the same address; the key also holds its version counter (an in-place change invalidates it).
    `clear()` drops everything.
    """

    def __init__(self, size: int = 3) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, Future]] = OrderedDict()

    @staticmethod
    def _key_of(x: torch.Tensor, what: tuple) -> tuple:
        return (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.storage_offset(), x._version, x.dtype, what)

    def get(self, x: torch.Tensor, what: tuple, compute: Callable[[], object]):
        key = self._key_of(x, what)
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if owner:
                entry = (x, Future())
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        future = entry[1]
        if owner:
            try:
                future.set_result(compute())
            except BaseException as error:
                future.set_exception(error)
                with self._lock:
                    if self._entries.get(key) is entry:
                        del self._entries[key]
                raise
        return future.result()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


RECENT_RESULTS = _RecentResults()


def cached_sorted_view(x: torch.Tensor, axis: int | None = None) -> SortedView:
    """`sorted_view(x)`, reusing a recent call's view when x is the same tensor (unchanged)."""
    return RECENT_RESULTS.get(x, ("sorted view", axis), lambda: sorted_view(x, axis))


def cached_result(x: torch.Tensor, what: tuple, compute: Callable[[], object]):
    """compute(), reusing a recent call's result for the same (unchanged) tensor x and the same hashable `what`."""
    return RECENT_RESULTS.get(x, what, compute)


def clear_cache() -> None:
    RECENT_RESULTS.clear()
