"""PTQ4SR (DBDC + Pac): the DBDC rule against an independent histogram implementation, the PA loss against
hand-computed values, Pac's two phases, and end-to-end runs on SwinIR-light (random weights) and IMDN x2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext, quantize_with_method
from bench.quant.surgery import QuantConfig, activation_quantizers, quantize_model, quantizers, weight_quantizers
from methods.dbdc import RunningMean, dbdc_mass, dbdc_range, shrink_bins
from methods.ptq4sr import PTQ4SR, dbdc_calibrate, pa_loss, pac_loss, pixel_attention


# ----------------------------------------------------------------------------------------------- DBDC

def reference_dbdc(x: np.ndarray, p: float, bins: int = 2048) -> tuple[float, float]:
    """Independent DBDC: numpy.histogram, then a plain loop that recounts the kept mass at every step."""
    x = x.astype(np.float64).ravel()
    low, high = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, bins=bins, range=(low, high))
    lo, hi = 0, bins - 1
    while counts[lo:hi + 1].sum() > (1 - p) * x.size and lo < hi:
        if counts[lo] < counts[hi]:
            lo += 1
        else:
            hi -= 1
    width = (high - low) / bins
    return low + width * (lo + 1), low + width * (hi + 1)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    heavy = torch.randn(100_000, generator=g) / torch.rand(100_000, generator=g).clamp(min=1e-3).sqrt()
    return {
        "normal": torch.randn(200_000, generator=g),
        "post-GELU-like (exponential, right-skewed)": torch.empty(300_000).exponential_(2.0, generator=g) - 0.17,
        "softmax map": torch.softmax(4 * torch.randn(512, 64, generator=g), dim=-1),
        "heavy tails": heavy,
        "skewed mixture": torch.cat([0.1 * torch.randn(90_000, generator=g),
                                     5 + 20 * torch.rand(10_000, generator=g)]),
        "left-skewed": -torch.empty(50_000).exponential_(1.0, generator=g),
    }


@pytest.mark.parametrize("name", list(_tensors()))
@pytest.mark.parametrize("p", [1e-4, 1e-5, 1e-2])
def test_dbdc_equals_independent_histogram_implementation(name, p):
    x = _tensors()[name]
    got = dbdc_range(x, p)
    assert (got.lower, got.upper) == reference_dbdc(x.numpy(), p)


def test_dbdc_known_histogram_and_lower_bound_quirk():
    # total 11, p = 0.2: mass must drop to <= 8.8. count[lo]=5 < count[hi]=3 is false -> hi -= 1 (mass 8).
    assert shrink_bins([5, 1, 0, 0, 0, 0, 2, 3], 0.2) == (0, 6)
    # p = 0.5 (mass <= 5.5): hi 7 -> 6 (mass 8) -> 5 (6), the empty bins 5..2 go from the top too (5 < 0 is
    # false), then bin 1 (5 < 1 false): mass 5, range (0, 0).
    assert shrink_bins([5, 1, 0, 0, 0, 0, 2, 3], 0.5) == (0, 0)
    # 1 < 2 -> lo 1 (mass 10), empty bins 1, 2 from the bottom (0 < 2), then 4 < 2 false -> hi 6 (mass 8).
    assert shrink_bins([1, 0, 0, 4, 4, 0, 0, 2], 0.2) == (3, 6)
    x = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 8.0])
    r = dbdc_range(x, 0.0, bins=8)  # nothing clipped: l is the upper edge of bin 0 (the code's quirk)
    assert (r.lower, r.upper) == (1.0, 8.0)


def test_dbdc_mass_rule_and_running_mean():
    assert dbdc_mass(2) == dbdc_mass(4) == dbdc_mass(7) == 1e-4
    assert dbdc_mass(8) == 1e-5
    mean = RunningMean()
    for lo, hi in [(-1.0, 2.0), (-3.0, 4.0), (-2.0, 9.0)]:
        mean.update(lo, hi)
    assert (mean.lower, mean.upper) == pytest.approx((-2.0, 5.0), abs=1e-15)


def test_dbdc_calibrate_sets_histogram_bounds_per_quantizer(swinir_random):
    qmodel = quantize_model(swinir_random, QuantConfig(4, 4, scope="2dquant"))
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    numel = dbdc_calibrate(qmodel, batches, p=None)

    seen: dict[str, list[tuple[float, float]]] = {}
    shapes: dict[str, int] = {}
    for batch in batches:
        capture_activations(qmodel, batch, lambda n, q, x: (seen.setdefault(n, []).append(
            reference_dbdc(x.numpy(), 1e-4)), shapes.setdefault(n, x.numel())))
    for name, q in activation_quantizers(qmodel):
        (l0, u0), (l1, u1) = seen[name]
        assert float(q.lower) == pytest.approx((l0 + l1) / 2, rel=1e-6, abs=1e-7)
        assert float(q.upper) == pytest.approx((u0 + u1) / 2, rel=1e-6, abs=1e-7)
        assert numel[name] == shapes[name]
    for name, q, w in weight_quantizers(qmodel):
        assert (float(q.lower), float(q.upper)) == (float(w.min()), float(w.max()))
        assert numel[name] == w.numel()
    assert len(quantizers(qmodel)) == 384


# ------------------------------------------------------------------------------------------------- PA

def _pa_pair_nchw() -> tuple[torch.Tensor, torch.Tensor]:
    # sample 0: channel-mean of F^2 is [1, 2] for A and [2, 0] for B; sample 1 is identical in A and B.
    a = torch.tensor([[[[1.0, 0.0]], [[1.0, 2.0]]], [[[3.0, 1.0]], [[0.0, 1.0]]]])  # (2, 2, 1, 2)
    b = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]], [[[3.0, 1.0]], [[0.0, 1.0]]]])
    return a, b


def test_pa_loss_hand_computed():
    a, b = _pa_pair_nchw()
    # n(A_0) = [1, 2]/sqrt5, n(B_0) = [1, 0]: squared distance 2 - 2/sqrt5, averaged over 2 x 2 entries.
    expected = (2 - 2 / math.sqrt(5)) / 4
    assert pa_loss(a, b).item() == pytest.approx(expected, rel=1e-6)
    assert pixel_attention(a)[0].tolist() == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5)])
    # The same features as SwinIR tokens (B, L, C): channel mean over the last dim, same value.
    to_tokens = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731
    assert pa_loss(to_tokens(a), to_tokens(b)).item() == pytest.approx(expected, rel=1e-6)


def test_pac_loss_value_and_detached_feature_term():
    a, b = _pa_pair_nchw()
    out_fp = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])
    out_q = torch.zeros_like(out_fp)
    expected = 2.5 + 5 * (2 - 2 / math.sqrt(5)) / 4
    for pa_grad in (False, True):
        feat_q = a.clone().requires_grad_(True)
        out = out_q.clone().requires_grad_(True)
        loss = pac_loss(out, out_fp, [feat_q], [b], pa_weight=5.0, pa_grad=pa_grad)
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        loss.backward()
        assert torch.equal(out.grad, torch.full((2, 1, 1, 2), -0.25))  # d L1_mean / d out_q
        if pa_grad:
            assert feat_q.grad.abs().sum() > 0
        else:  # released code: the PA term carries no gradient
            assert feat_q.grad is None
    assert pac_loss(out_q, out_fp, [], []).item() == pytest.approx(2.5)
