"""Counts and float64 sums of a tensor's values between sorted thresholds, in one pass without sorting.

A range search whose candidates are known before it reads the data (DOBI's grid depends only on min and max)
needs, for every candidate level, the number and the sum of the elements below that level's first value: a
few thousand thresholds. Sorting the values to answer that, and summing them in order (`sorted_view`), cost
8.7-9.7 ns per value on one core of the development machine; one pass that puts each value into its bucket
between the sorted thresholds and adds it there costs 2.6-3.4 ns (results/reference/speed.md, item 7).
The bucket of a value v is the number of thresholds <= v, found exactly: a table of G equal cells over the
thresholds' span gives, for the cell of v, the number of thresholds in earlier cells; the few thresholds inside
that cell are then compared with v. The cell index is a monotone function of v, evaluated with the same
arithmetic for the table and the data, so a threshold in an earlier cell is always < v and one in a later cell
always > v, whatever the rounding.

Sums are of d = v - center in float64, with a float32 center, so that d is exact (a difference of two float32
is exact in float64 unless their magnitudes differ by more than 2^29). Each bucket's sum is
kept per chunk of 16,384 values in four lanes (so that a bucket that gets most values does not serialise the
loop), and each chunk's sum is added into a compensated total (TwoSum); the sum of squares is compensated value
by value. Against an extended-precision sum from a sort, the bucket sums agree to 1e-13 of sum |d| and the sum of
squares to 1e-14 relative (tests/test_bin_sums.py).

The kernel is compiled by numba (on-disk cache). Without numba, `available()` is False and callers use the
sorted engine (bench.quant.range_search), which gives the same numbers, more slowly.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ENV_SWITCH = "BENCH_STREAMED_SEARCH"   # "0": never stream (the sorted engine does the work)
_CHUNK = 1 << 14                       # values per partial accumulation before the compensated add
_CELLS_PER_THRESHOLD = 64              # table cells per threshold: on real activations ~1 % of values need a compare
_MAX_CELLS = 1 << 17                   # 1 MB of table
_MIN_PART = 1 << 20                    # below this many values per thread, one thread does the pass
_LD = np.longdouble

try:
    import numba
except ImportError:  # numba is a dependency; a platform without its wheels still gets the sorted engine
    numba = None


def available() -> bool:
    """True when the streaming kernel can run (numba importable and not switched off)."""
    return numba is not None and os.environ.get(ENV_SWITCH, "1") != "0"


def _probe() -> int:
    return 0


def _can_cache() -> bool:
    """Whether numba finds a writable cache location (the package folder or a user cache folder). A read-only
    install without one would raise at decoration; the kernels then compile in every process (~4 s) instead."""
    try:
        numba.njit(cache=True)(_probe)
        return True
    except RuntimeError:
        return False


if numba is not None:
    _CACHE = _can_cache()
    _jit = numba.njit(nogil=True, boundscheck=False, cache=_CACHE)
    _inline = numba.njit(nogil=True, boundscheck=False, inline="always", cache=_CACHE)

    @_inline
    def _cell(v, origin, inverse_width, last_cell):
        # min/max instead of branches: most of a softmax map lies below the first threshold, and a branch on
        # that mispredicts. Unsigned indices: numba then adds no negative-index wraparound.
        x = (np.float64(v) - origin) * inverse_width
        return np.uint64(min(max(x, 0.0), last_cell))

    @_jit
    def _cell_table(thresholds, origin, inverse_width, cells):
        """code[g] = (number of thresholds in cells < g) << 32 | (number of thresholds in cell g)."""
        inside = np.zeros(cells, dtype=np.uint64)
        last_cell = np.float64(cells - 1)
        for i in range(thresholds.size):
            inside[_cell(thresholds[i], origin, inverse_width, last_cell)] += 1
        code = np.zeros(cells, dtype=np.uint64)
        before = np.uint64(0)
        for g in range(cells):
            code[g] = (before << np.uint64(32)) | inside[g]
            before += inside[g]
        return code

    @_inline
    def _bucket(v, thresholds, code, origin, inverse_width, last_cell):
        c = code[_cell(v, origin, inverse_width, last_cell)]
        index = c >> np.uint64(32)
        inside = c & np.uint64(0xFFFFFFFF)
        if inside != 0:
            first = index
            for j in range(inside):
                index += np.uint64(thresholds[first + np.uint64(j)] <= v)
        return index

    @_inline
    def _two_sum_error(a, b, t):
        # Knuth's TwoSum: a + b = t + error exactly (no branch, so no misprediction)
        b_part = t - a
        return (a - (t - b_part)) + (b - b_part)

    @_inline
    def _add_value(v, lane, q, q_error, counts, partial, thresholds, code, origin, inverse_width, last_cell, center):
        """One value into its lane's bucket; returns the lane's new sum of squares and its rounding error."""
        b = _bucket(v, thresholds, code, origin, inverse_width, last_cell) + lane
        d = np.float64(v) - center   # exact: v and center are float32
        counts[b] += 1
        partial[b] += d
        dd = d * d
        t = q + dd
        return t, q_error + _two_sum_error(q, dd, t)

    @_jit
    def _bin_sums_kernel(values, thresholds, code, origin, inverse_width, center, chunk):
        m = thresholds.size
        width = np.uint64(m + 1)
        last_cell = np.float64(code.size - 1)
        # four lanes (offsets into one array), so that a bucket that gets most values is not one dependency chain
        lane0, lane1, lane2, lane3 = np.uint64(0), width, np.uint64(2) * width, np.uint64(3) * width
        counts = np.zeros(4 * (m + 1), dtype=np.int64)
        partial = np.zeros(4 * (m + 1), dtype=np.float64)  # this chunk's sums
        total = np.zeros(m + 2, dtype=np.float64)          # slot m + 1: the sum of squares
        compensation = np.zeros(m + 2, dtype=np.float64)   # the rounding errors of `total`
        n = values.size
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            q0 = q1 = q2 = q3 = 0.0
            e0 = e1 = e2 = e3 = 0.0
            i = start
            while i + 4 <= stop:
                q0, e0 = _add_value(values[i], lane0, q0, e0, counts, partial, thresholds, code, origin,
                                    inverse_width, last_cell, center)
                q1, e1 = _add_value(values[i + 1], lane1, q1, e1, counts, partial, thresholds, code, origin,
                                    inverse_width, last_cell, center)
                q2, e2 = _add_value(values[i + 2], lane2, q2, e2, counts, partial, thresholds, code, origin,
                                    inverse_width, last_cell, center)
                q3, e3 = _add_value(values[i + 3], lane3, q3, e3, counts, partial, thresholds, code, origin,
                                    inverse_width, last_cell, center)
                i += 4
            while i < stop:
                q0, e0 = _add_value(values[i], lane0, q0, e0, counts, partial, thresholds, code, origin,
                                    inverse_width, last_cell, center)
                i += 1
            for b in range(m + 1):
                y = (partial[b] + partial[b + lane1]) + (partial[b + lane2] + partial[b + lane3])
                t = total[b] + y
                compensation[b] += _two_sum_error(total[b], y, t)
                total[b] = t
                partial[b] = partial[b + lane1] = partial[b + lane2] = partial[b + lane3] = 0.0
            y = (q0 + q1) + (q2 + q3)
            t = total[m + 1] + y
            compensation[m + 1] += _two_sum_error(total[m + 1], y, t) + ((e0 + e1) + (e2 + e3))
            total[m + 1] = t
        return counts.reshape(4, m + 1).sum(axis=0), total, compensation



def _table(thresholds: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The cell table over the thresholds' span, with two empty cells below the first and above the last (so that
    rounding never puts the first threshold into cell 0, where every value below it lands)."""
    wanted = _CELLS_PER_THRESHOLD * max(1, thresholds.size)
    cells = int(min(_MAX_CELLS, max(64, 1 << int(np.ceil(np.log2(wanted))))))
    low, high = float(thresholds[0]), float(thresholds[-1])
    width = (high - low) / (cells - 5)
    if not (width > 0 and np.isfinite(width)):  # one threshold, or a span too large for float64 cells
        width = max(abs(low), 1.0)
    origin = low - 2 * width
    inverse_width = 1.0 / width
    return _cell_table(thresholds, origin, inverse_width, cells), origin, inverse_width


def _parts(values: np.ndarray, threads: int, fn):
    """fn on `threads` contiguous parts of values, each on its own thread (the kernels release the GIL)."""
    parts = max(1, min(int(threads), values.size // _MIN_PART))
    if parts == 1:
        return [fn(values)]
    edges = np.linspace(0, values.size, parts + 1).astype(np.int64)
    with ThreadPoolExecutor(parts) as pool:
        return list(pool.map(lambda k: fn(values[edges[k]:edges[k + 1]]), range(parts)))


def bin_sums(values: np.ndarray, thresholds: np.ndarray, center: float,
             threads: int = 1) -> tuple[np.ndarray, np.ndarray, np.longdouble]:
    """Per bucket b = 0..m (bucket b holds thresholds[b-1] <= v < thresholds[b]): the count (int64) and the sum
    of (v - center) (longdouble), and the total sum of (v - center)^2 (longdouble).

    values: 1-D float32, finite. thresholds: 1-D float32, sorted, unique, finite (m of them). `threads` > 1 splits
    the values into that many contiguous parts, each on its own thread (the kernel releases the GIL)."""
    if not available():
        raise RuntimeError(f"the streaming bin sums need numba (pip install numba), and {ENV_SWITCH} != 0")
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    thresholds = np.ascontiguousarray(thresholds, dtype=np.float32)
    m = thresholds.size
    # no thresholds: one cell of one bucket, every value in it
    code, origin, inverse_width = _table(thresholds) if m else (np.zeros(1, dtype=np.uint64), 0.0, 1.0)
    results = _parts(values, threads, lambda part: _bin_sums_kernel(part, thresholds, code, origin, inverse_width,
                                                                    float(center), _CHUNK))
    counts = np.zeros(m + 1, dtype=np.int64)
    sums = np.zeros(m + 2, dtype=_LD)
    for part_counts, total, compensation in results:
        counts += part_counts
        sums += total.astype(_LD) + compensation.astype(_LD)
    return counts, sums[:m + 1], sums[m + 1]
