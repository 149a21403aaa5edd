"""PTQ4SR (DBDC + Pac): the DBDC rule against an independent histogram implementation, the PA loss against
hand-computed values, Pac's two phases, and end-to-end runs on SwinIR-light (random weights) and IMDN x2."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext, quantize_with_method
from bench.quant.surgery import (
    QuantConfig,
    activation_quantizers,
    quantize_model,
    quantizers,
    weight_quantizers,
)
from methods.dbdc import RunningMean, dbdc_mass, dbdc_range, shrink_bins
from methods.ptq4sr import PTQ4SR, dbdc_calibrate, pa_loss, pac_loss, pixel_attention

pytestmark = pytest.mark.usefixtures("one_thread")

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


def _dbdc_pair(x: torch.Tensor, p: float) -> tuple[float, float]:
    r = dbdc_range(x, p)
    return r.lower, r.upper


def test_dbdc_calibrate_sets_histogram_bounds_per_quantizer(swinir_random):
    qmodel = quantize_model(swinir_random, QuantConfig(4, 4, scope="2dquant"))
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(2, 3, 16, 16, generator=g) for _ in range(2)]
    numel = dbdc_calibrate(qmodel, batches, p=None)

    seen: dict[str, list[tuple[float, float]]] = {}
    shapes: dict[str, int] = {}
    for batch in batches:  # dbdc_range itself is checked against the reference above
        capture_activations(qmodel, batch, lambda n, q, x: (seen.setdefault(n, []).append(
            _dbdc_pair(x, 1e-4)), shapes.setdefault(n, x.numel())))
    for name, q in activation_quantizers(qmodel):
        (l0, u0), (l1, u1) = seen[name]
        assert q.lower.item() == pytest.approx((l0 + l1) / 2, rel=1e-6, abs=1e-7)
        assert q.upper.item() == pytest.approx((u0 + u1) / 2, rel=1e-6, abs=1e-7)
        assert numel[name] == shapes[name]
    for name, q, w in weight_quantizers(qmodel):
        assert (q.lower.item(), q.upper.item()) == (float(w.min()), float(w.max()))
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
    to_tokens = lambda t: t.flatten(2).transpose(1, 2)
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


# ------------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def imdn_x2(weights_dir):
    from models import create_model
    return create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")


def _bounds(qmodel) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: q.bounds() for name, q in quantizers(qmodel)}


def test_dbdc_edge_convs_at_8_bits_use_p_1e5_and_weights_per_channel_minmax(imdn_x2):
    qmodel = quantize_model(imdn_x2, QuantConfig(4, 4, scope="ptq4sr"))
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    dbdc_calibrate(qmodel, [batch], p=None)
    expected: dict[str, tuple[float, float]] = {}
    capture_activations(qmodel, batch, lambda n, q, x: expected.setdefault(
        n, (dbdc_range(x, 1e-5 if q.bits == 8 else 1e-4), x)))
    eight_bit = [name for name, q in activation_quantizers(qmodel) if q.bits == 8]
    assert len(eight_bit) == 2  # first and last conv (spec 4.4, native scope)
    assert all(q.bits == 4 for name, q in activation_quantizers(qmodel) if name not in eight_bit)
    degenerate = 0
    for name, q in activation_quantizers(qmodel):
        r, x = expected[name]
        if r.upper > r.lower:
            assert (q.lower.item(), q.upper.item()) == pytest.approx((r.lower, r.upper), rel=1e-6, abs=1e-7)
        else:  # a constant input (e.g. an all-zero map): the core widens l = u by 1e-6
            degenerate += 1
            assert float(x.min()) == float(x.max()) == q.lower.item()
    for name in eight_bit:  # 8-bit layers clip 1e-5 of the mass, the others 1e-4 (D16)
        r, x = expected[name]
        assert (r.lower, r.upper) == reference_dbdc(x.numpy(), 1e-5)
    for name, q, w in weight_quantizers(qmodel):
        assert q.per_channel
        assert torch.equal(q.lower, w.detach().flatten(1).amin(1)) and torch.equal(q.upper, w.detach().flatten(1).amax(1))


def test_pac_phases_train_only_their_bounds(swinir_random):
    fp = swinir_random
    qmodel = quantize_model(fp, QuantConfig(4, 4, scope="2dquant"))
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ctx = CalibContext(fp_model=fp, calib_batch=batch, progress=False)
    method = PTQ4SR(iters=2, batch=1, patch=16)
    numel = dbdc_calibrate(qmodel, [batch], p=None)
    weights_before = {k: v.clone() for k, v in qmodel.state_dict().items() if not k.endswith(("lower", "upper"))}
    start = _bounds(qmodel)

    history = method.pac(qmodel, ctx, numel, phases=("weight",))  # phase B alone
    after_b = _bounds(qmodel)
    moved = 0
    for name, q in quantizers(qmodel):
        same = all(torch.equal(a, b) for a, b in zip(start[name], after_b[name]))
        if q.is_weight:
            moved += not same
        else:
            assert same, f"phase B changed activation bounds of {name}"
    assert moved == 144  # every weight quantizer: 6 linears (q, k, v, proj, fc1, fc2) x 24 blocks
    assert len(history.weight.losses) == 2 and history.act.losses == []
    # Adam moves each bound by about the learning rate (5e-6 -> cosine) per step: tiny but non-zero.
    step = max(float((after_b[n][1] - start[n][1]).abs()) for n, q in quantizers(qmodel) if q.is_weight)
    assert 1e-6 < step < 2e-5

    method.pac(qmodel, ctx, numel, phases=("act",))  # phase A alone
    after_a = _bounds(qmodel)
    moved_act = total_act = 0
    for name, q in quantizers(qmodel):
        same = all(torch.equal(a, b) for a, b in zip(after_b[name], after_a[name]))
        if q.is_weight:
            assert same, f"phase A changed weight bounds of {name}"
        else:
            total_act += 1
            moved_act += not same
    # A few deep q/k input bounds of the random model get gradients of ~1e-12 after the LSQ factor: Adam's
    # step is then below the float32 spacing of the bound, so they legitimately stay put.
    assert total_act == 240 and moved_act >= 0.95 * total_act
    # Weights, biases and LayerNorms are untouched; the LSQ factor and requires_grad are restored.
    for k, v in qmodel.state_dict().items():
        if k in weights_before:
            assert torch.equal(v, weights_before[k]), k
    assert all(q.grad_scale is None for _, q in quantizers(qmodel))
    assert {p.requires_grad for n, p in qmodel.named_parameters() if n.endswith(("lower", "upper"))} == {True}
    assert {p.requires_grad for n, p in qmodel.named_parameters() if not n.endswith(("lower", "upper"))} == {False}


def _check_quantized(qmodel, fp, batch):
    with torch.no_grad():
        out, ref = qmodel(batch), fp(batch)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    for name, q in quantizers(qmodel):
        assert q.calibrated and torch.isfinite(q.lower).all() and torch.isfinite(q.upper).all(), name
        assert (q.lower < q.upper).all(), name
    return float((out - ref).abs().mean())


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_ptq4sr_end_to_end_swinir(swinir_random, bits):
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(bits))
    method = PTQ4SR(iters=1, batch=1, patch=16)
    qmodel, seconds = quantize_with_method(swinir_random, method, bits, bits,
                                           CalibContext(calib_batch=batch, progress=False))
    assert len(quantizers(qmodel)) == 384 and seconds > 0
    _check_quantized(qmodel, swinir_random, batch)
    assert len(method.history.act.losses) == 1 and len(method.history.weight.losses) == 1
    assert qmodel.quant_method["params"]["pa_grad"] is False


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_ptq4sr_end_to_end_imdn_x2(imdn_x2, train_root, bits):
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(bits))
    method = PTQ4SR(iters=2, batch=2, patch=16, pa_grad=True)
    # Fine-tuning patches come from the training images (PatchSampler), not from the calibration batch.
    ctx = CalibContext(calib_batch=batch, train_dir=train_root, progress=False)
    qmodel, _ = quantize_with_method(imdn_x2, method, bits, bits, ctx)
    error = _check_quantized(qmodel, imdn_x2, batch)
    assert error > 0
    assert all(math.isfinite(v) for v in method.history.act.losses + method.history.weight.losses)
    assert len(method.history.act.losses) == 2
