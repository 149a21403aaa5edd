"""The streamed bin sums (bench.quant.bin_sums) against a sort: exact counts, sums to ~1e-13 of sum |v - center|."""
from __future__ import annotations

import numpy as np
import pytest

from bench.quant import bin_sums as bs

pytestmark = pytest.mark.skipif(not bs.available(), reason="the streamed bin sums need numba (pip install numba)")


def reference(values: np.ndarray, thresholds: np.ndarray, center: float):
    """Counts and longdouble sums per bucket (thresholds[b-1] <= v < thresholds[b]) from a sort."""
    ordered = np.sort(values)
    edges = np.concatenate([[0], np.searchsorted(ordered, thresholds, side="left"), [ordered.size]])
    d = ordered.astype(np.longdouble) - np.longdouble(center)
    prefix = np.concatenate([np.zeros(1, dtype=np.longdouble), np.cumsum(d)])
    return np.diff(edges), np.diff(prefix[edges]), (d * d).sum(), np.abs(d).sum()


CASES = {
    "normal, 1,515 thresholds": (lambda g: g.standard_normal(1_000_003), lambda g: np.linspace(-3, 3, 1515)),
    "softmax-like: most values below the first threshold": (
        lambda g: g.exponential(0.002, 600_001), lambda g: np.linspace(0.01, 0.2, 700)),
    "values equal to thresholds": (
        lambda g: g.integers(-20, 21, 200_000) * 0.125, lambda g: np.arange(-16, 17) * 0.125),
    "thresholds outside the data": (lambda g: g.uniform(-1, 1, 50_000), lambda g: np.array([-5.0, -2.0, 3.0, 7.0])),
    "one threshold": (lambda g: g.standard_normal(10_007), lambda g: np.array([0.3])),
    "clustered thresholds (many in one cell)": (
        lambda g: g.standard_normal(300_000), lambda g: np.concatenate([np.linspace(0, 1e-6, 400), [5.0]])),
    "far from 0, tiny range": (lambda g: 1000 + g.uniform(0, 1e-3, 100_000), lambda g: 1000 + np.linspace(0, 1e-3, 31)),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_counts_are_exact_and_sums_agree_with_a_sorted_reference(name, threads):
    g = np.random.default_rng(0)
    make_values, make_thresholds = CASES[name]
    values = make_values(g).astype(np.float32)
    thresholds = np.unique(make_thresholds(g).astype(np.float32))
    center = float(np.float32(values.mean()))
    counts, sums, sq_total = bs.bin_sums(values, thresholds, center, threads)
    want_counts, want_sums, want_sq, scale = reference(values, thresholds, center)
    assert np.array_equal(counts, want_counts)
    assert float(np.max(np.abs(sums - want_sums)) / scale) < 1e-13
    assert abs(float(sq_total - want_sq)) <= 1e-14 * float(want_sq)


def test_no_thresholds_is_one_bucket_and_the_tail_of_a_chunk_counts():
    values = np.arange(16_387, dtype=np.float32)  # one chunk of 16,384 values and 3 more, not a multiple of 4
    counts, sums, sq_total = bs.bin_sums(values, np.array([], dtype=np.float32), 0.0)
    assert counts.tolist() == [16_387]
    assert float(sums[0]) == float(values.astype(np.float64).sum())
    assert float(sq_total) == float((values.astype(np.float64) ** 2).sum())


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(bs.ENV_SWITCH, "0")
    assert not bs.available()
    with pytest.raises(RuntimeError, match="BENCH_STREAMED_SEARCH"):
        bs.bin_sums(np.zeros(4, dtype=np.float32), np.array([0.5], dtype=np.float32), 0.0)


def test_a_read_only_install_without_a_cache_folder_still_imports(monkeypatch):
    """numba raises at decoration when no cache location is writable; the kernels then compile uncached."""
    import numba

    def no_locator(*args, **kwargs):
        raise RuntimeError("cannot cache function '_probe': no locator available for file")
    monkeypatch.setattr(numba, "njit", lambda **options: no_locator if options.get("cache") else (lambda f: f))
    assert not bs._can_cache()
