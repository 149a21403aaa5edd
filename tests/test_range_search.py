"""The range-search engines (bench.quant.range_search: sorted view, and the streamed pass of bench.quant.bin_sums)
against brute force, and DOBI/EMMSE/Percentile/DBDC on them.

The oracle computes every candidate on every element with the quantizer's own float32 arithmetic and exact
float64 differences and sums; the engines must give the same errors within 1e-9 relative (in practice ~1e-12).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from bench.quant import FakeQuantizer, QuantConfig, capture_activations, quantize_model, weight_quantizers
from bench.quant import range_search as rs
from bench.quant.quantizer import fake_quantize
from methods.dobi import DOBI, dobi_grid, dobi_grid_rows, dobi_search, grid_sq_errors, pick, streamed_search
from methods.emmse import affine_qparams, candidate_ranges, mse_range
from methods.registry import create_method

pytestmark = pytest.mark.usefixtures("one_thread")

REL = 1e-9
needs_numba = pytest.mark.skipif(not rs.streamable(), reason="the streamed search needs numba (pip install numba)")


def streamed_errors(x: torch.Tensor, lowers, uppers, bits: int, threads: int = 1) -> np.ndarray:
    return rs.two_bound_errors_streamed(rs.streamed_tensor(x), np.asarray(lowers), np.asarray(uppers), bits, threads)


def brute_two_bound(x: torch.Tensor, lowers: torch.Tensor, uppers: torch.Tensor, bits: int) -> np.ndarray:
    """||x - Q(x; l_c, u_c)||^2 for each candidate, Q = the quantizer's own forward."""
    out = []
    for lo, hi in zip(lowers, uppers):
        with torch.no_grad():
            q = fake_quantize(x, lo, hi, bits)
        out.append(float((q.double() - x.double()).square().sum()))
    return np.array(out)


def brute_affine(x: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> np.ndarray:
    out = []
    for s, z in zip(scales, zeros):
        q = torch.fake_quantize_per_tensor_affine(x, float(s), int(z), 0, 2 ** bits - 1)
        out.append(float((q.double() - x.double()).square().sum()))
    return np.array(out)


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n = 20_000
    return {
        "normal": torch.randn(n, generator=g),
        "cauchy-like heavy tails": torch.randn(n, generator=g) / torch.rand(n, generator=g).clamp(min=1e-4),
        "softmax map": torch.softmax(5 * torch.randn(n // 64, 64, generator=g), dim=-1).reshape(-1),
        "repeated values": torch.randint(-3, 4, (n,), generator=g).float() * 0.5,
        "tiny range far from 0": 100.0 + torch.rand(n, generator=g) * 1e-4,
        "post-GELU-like": torch.nn.functional.gelu(3 * torch.randn(n, generator=g)),
        "larger than a block prefix": torch.randn(70_000, generator=g) * 7 + 3,  # > the full-prefix limit
    }


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("name", list(tensors()))
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_two_bound_errors_equal_brute_force(name, bits):
    x = tensors()[name]
    grid = dobi_grid(float(x.min()), float(x.max()), 50, "paper", one_sided=False)
    got = rs.two_bound_errors(rs.sorted_view(x), grid.lowers.numpy()[None], grid.uppers.numpy()[None], bits)[0]
    want = brute_two_bound(x, grid.lowers, grid.uppers, bits)
    assert _rel(got, want) < REL
    # the existing chunked brute force (now with exact float64 differences) is the same oracle
    assert _rel(got, grid_sq_errors(x, grid, bits).numpy()) < REL


@needs_numba
@pytest.mark.parametrize("name", list(tensors()))
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("one_sided", [False, True])
def test_streamed_two_bound_errors_equal_brute_force(name, bits, one_sided):
    x = tensors()[name]
    grid = dobi_grid(float(x.min()), float(x.max()), 50, "paper", one_sided)
    got = streamed_errors(x, grid.lowers.numpy(), grid.uppers.numpy(), bits)
    want = brute_two_bound(x, grid.lowers, grid.uppers, bits)
    assert _rel(got, want) < REL


@needs_numba
def test_streamed_errors_of_candidates_beyond_the_data_and_of_zero_width():
    """Bounds outside [min, max], zero-width and near-zero-width ranges, a constant tensor, two threads."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3_000_000, generator=g)
    lowers = np.array([-8.0, -1.0, 0.5, 0.5, -0.25, 7.0], dtype=np.float32)
    uppers = np.array([8.0, 1.0, 0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.0, 9.0], dtype=np.float32)
    want = brute_two_bound(x, torch.from_numpy(lowers), torch.from_numpy(uppers), 4)
    for threads in (1, 2):
        assert _rel(streamed_errors(x, lowers, uppers, 4, threads), want) < REL
    constant = torch.full((1000,), 3.5)
    lowers = np.array([3.5, 3.0, 3.5], dtype=np.float32)
    uppers = np.array([3.5, 4.0, 3.5000002], dtype=np.float32)
    got = streamed_errors(constant, lowers, uppers, 4)
    assert np.allclose(got, brute_two_bound(constant, torch.from_numpy(lowers), torch.from_numpy(uppers), 4),
                       rtol=REL, atol=1e-12)
    assert got[0] == 0.0


@needs_numba
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_level_thresholds_are_the_first_float32_of_each_level(bits):
    """t_k is the smallest float32 whose rounding index is >= k: index(t_k) >= k > index(the float32 below t_k)."""
    lowers = np.array([[-3.0, 0.0, 1e-3, -1e4]], dtype=np.float32)
    uppers = np.array([[2.0, 1.0, 1.5e-3, 1e4]], dtype=np.float32)
    lo, hi, _, index_of = rs._two_bound_rounding(lowers, uppers, bits)
    t = rs.level_thresholds(index_of, lo, hi, 2 ** bits)
    k = np.arange(1, 2 ** bits, dtype=np.float32)
    assert np.isfinite(t).all()
    assert (index_of(t) >= k).all()
    assert (index_of(np.nextafter(t, np.float32(-np.inf))) < k).all()


@pytest.mark.parametrize("name", list(tensors()))
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_affine_errors_equal_brute_force(name, bits):
    x = tensors()[name]
    lows, highs = candidate_ranges(float(x.min()), float(x.max()), 95)
    scale, zero = affine_qparams(lows, highs, bits)
    got = rs.affine_errors(rs.sorted_view(x), scale.numpy()[None], zero.numpy()[None], bits)[0]
    assert _rel(got, brute_affine(x, scale, zero, bits)) < REL


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_channel_rows_equal_brute_force_per_channel(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(6, 4, 3, 3, generator=g) * torch.tensor([0.01, 0.1, 1, 10, 100, 1000]).view(6, 1, 1, 1)
    w[2] = 0.25  # a constant channel
    view = rs.sorted_view(w, axis=0)
    m, M = view.values[:, 0], view.values[:, -1]
    lowers, uppers = dobi_grid_rows(m, M, 20, "paper", one_sided=False)
    got = rs.two_bound_errors(view, lowers, uppers, bits)
    for c in range(6):
        want = brute_two_bound(w[c].reshape(-1), torch.from_numpy(lowers[c]), torch.from_numpy(uppers[c]), bits)
        assert np.allclose(got[c], want, rtol=REL, atol=1e-12)  # atol: the constant channel's zero-width candidates


def test_constant_tensor_and_zero_width_candidates():
    x = torch.full((1000,), 3.5)
    view = rs.sorted_view(x)
    lowers = np.array([[3.5, 3.0, 3.5]], dtype=np.float32)
    uppers = np.array([[3.5, 4.0, 3.5000002]], dtype=np.float32)
    got = rs.two_bound_errors(view, lowers, uppers, 4)[0]
    want = brute_two_bound(x, torch.from_numpy(lowers[0]), torch.from_numpy(uppers[0]), 4)
    assert np.allclose(got, want, rtol=REL, atol=1e-12)
    assert got[0] == 0.0
    assert dobi_search(x, 4) == (3.5, 3.5)


def test_grid_dobi_rows_equals_the_scalar_grid():
    for one_sided in (False, True):
        for variant in ("paper", "code"):
            grid = dobi_grid(-1.25, 3.7, 100, variant, one_sided)
            lo, hi = dobi_grid_rows(np.array([-1.25]), np.array([3.7]), 100, variant, one_sided)
            assert np.array_equal(lo[0], grid.lowers.numpy()) and np.array_equal(hi[0], grid.uppers.numpy())


@pytest.mark.parametrize("engine", ["sorted", pytest.param("streamed", marks=needs_numba)])
@pytest.mark.parametrize("variant", ["paper", "code"])
@pytest.mark.parametrize("one_sided", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dobi_search_picks_the_brute_force_bounds(engine, variant, one_sided, bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(30_000, generator=g) ** 3 if not one_sided else torch.rand(30_000, generator=g) ** 5
    # 30,000 values: dobi_search's default takes the sorted engine (<= 65,536); streamed_search has no such limit
    got = (dobi_search(x, bits, 100, variant, one_sided) if engine == "sorted"
           else streamed_search(x, bits, 100, variant, one_sided))
    assert got == dobi_search(x, bits, 100, variant, one_sided, "brute")


@needs_numba
def test_dobi_search_streams_large_tensors_and_refuses_nan_and_inf(monkeypatch):
    """Above 65,536 elements the default search is the streamed pass (q, k and v share one); a NaN or an inf is
    a one-line error in every search (the sorted one failed with an IndexError before)."""
    calls = []
    original = rs.two_bound_errors_streamed
    monkeypatch.setattr("methods.dobi.two_bound_errors_streamed", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    rs.clear_cache()
    bounds = [dobi_search(x, 4) for _ in range(3)]
    assert len(calls) == 1 and bounds[0] == bounds[1] == bounds[2] == dobi_search(x, 4, search="sorted")
    for bad in (float("nan"), float("inf")):
        x[17] = bad
        for search in ("stream", "sorted", "brute"):
            with pytest.raises(ValueError, match=r"NaN or inf \(1 of 100000 values, shape \(100000,\)\)"):
                dobi_search(x, 4, search=search)
    rs.clear_cache()


def test_dobi_streamed_runs_on_the_forward_thread_and_sorted_beside_it(monkeypatch):
    import methods.base as methods_base
    monkeypatch.setattr(methods_base, "capture_workers", lambda: 1)
    assert DOBI(search="sorted").rule_workers() == 1 and DOBI(search="brute").rule_workers() == 1
    assert DOBI().rule_workers() == (0 if rs.streamable() else 1)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_emmse_sorted_search_picks_the_brute_force_range(bits):
    x = torch.randn(30_000, generator=torch.Generator().manual_seed(bits)) * 3 + 1
    assert mse_range(x, bits) == mse_range(x, bits, search="brute")


def test_quantiles_and_histograms_equal_numpy():
    x = tensors()["cauchy-like heavy tails"]
    view = rs.sorted_view(x)
    values = x.double().numpy()
    for q in (0.0, 1e-4, 0.3, 0.5, 1 - 1e-4, 1.0):
        assert rs.quantile_linear(view, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12, abs=1e-12)
    low, high = float(x.min()), float(x.max())
    counts, _ = np.histogram(values, bins=2048, range=(low, high))
    assert np.array_equal(rs.histogram_counts(view, 2048, low, high), counts)


def test_cached_view_is_reused_for_the_same_tensor_and_dropped_after_a_change():
    x = torch.randn(5000)
    first = rs.cached_sorted_view(x)
    assert rs.cached_sorted_view(x.detach()) is first      # q, k and v quantizers: one sort
    x.mul_(2)                                              # in-place change: version counter moves
    assert rs.cached_sorted_view(x) is not first
    rs.clear_cache()
    assert not rs.RECENT_RESULTS._entries


def test_cached_view_sorts_a_tensor_once_across_threads(monkeypatch):
    """A capture with worker threads: q, k and v quantizers of one input on three threads share one sort."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    calls, start = [], threading.Barrier(3)
    original = rs.sorted_view
    monkeypatch.setattr(rs, "sorted_view", lambda x, axis=None: calls.append(1) or original(x, axis))
    x = torch.randn(200_000)
    rs.clear_cache()

    def view(_):
        start.wait()
        return rs.cached_sorted_view(x)

    with ThreadPoolExecutor(3) as pool:
        views = list(pool.map(view, range(3)))
    assert len(calls) == 1 and views[0] is views[1] is views[2]
    assert np.array_equal(views[0].values[0], np.sort(x.numpy()))
    rs.clear_cache()


@dataclass
class PickReport:
    quantizers: int = 0
    same_pick: int = 0
    worst_relative_gap: float = 0.0
    details: list = field(default_factory=list)


def compare_dobi_on_model(model: torch.nn.Module, batch: torch.Tensor) -> PickReport:
    """For every quantizer of the W4A4 model and both DOBI variants: the candidate each engine (sorted view, and
    streamed pass where numba is installed) picks against the one brute force picks, scored by the exact
    brute-force error."""
    qmodel = quantize_model(model, QuantConfig(4, 4))
    tensors_seen: list[tuple[str, FakeQuantizer, torch.Tensor]] = []
    capture_activations(qmodel, batch, lambda name, q, x: tensors_seen.append((name, q, x.clone())))
    tensors_seen += [(name, q, w.detach()) for name, q, w in weight_quantizers(qmodel)]
    report = PickReport()
    for variant in ("paper", "code"):
        method = create_method("dobi", variant=variant)
        for name, q, x in tensors_seen:
            one_sided = method.one_sided(q)
            m, M = float(x.min()), float(x.max())
            report.quantizers += 1
            if not M > m:
                report.same_pick += 1 + rs.streamable()
                continue
            grid = dobi_grid(m, M, 100, variant, one_sided)
            exact = grid_sq_errors(x, grid, q.bits).numpy()
            engines = {"sorted": rs.two_bound_errors(rs.sorted_view(x), grid.lowers.numpy()[None],
                                                     grid.uppers.numpy()[None], q.bits)[0]}
            if rs.streamable():
                engines["streamed"] = streamed_errors(x, grid.lowers.numpy(), grid.uppers.numpy(), q.bits)
            theirs = pick(exact, variant == "paper")
            for engine, fast in engines.items():
                mine = pick(fast, variant == "paper")
                report.same_pick += mine == theirs
                gap = (exact[mine] - exact[theirs]) / max(exact[theirs], 1e-300)
                if gap > report.worst_relative_gap:
                    report.worst_relative_gap = float(gap)
                    report.details.append((engine, variant, name, mine, theirs, float(gap)))
    return report


def test_dobi_on_shipped_swinir_light_x2_with_the_embedded_calibration_photos():
    """The acceptance check on real weights and real images: shipped SwinIR-light x2, 2 LR patches of 16x16 (the
    brute-force oracle is what costs: 101 candidates on every element of 768 tensors)."""
    from bench.data.calib import calibration_batch
    from bench.data.sample import sample_train_dir
    from models import create_model
    model = create_model("swinir-light", 2, weights=None)
    report = compare_dobi_on_model(model, calibration_batch(sample_train_dir(), 2, n=2, patch=16, seed=0))
    assert report.quantizers == 2 * 384
    engines = 1 + rs.streamable()
    assert report.worst_relative_gap <= 1e-12, report.details
    assert report.same_pick >= engines * report.quantizers - 2 * engines, report.details
