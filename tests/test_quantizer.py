"""FakeQuantizer: forward of spec §2.3 and the per-element gradients of spec §2.4."""
from __future__ import annotations

import math

import pytest
import torch

from bench.errors import ConfigError
from bench.quant import FakeQuantizer, QuantConfig, lsq_grad_scale


def make(bits: int, lower: float, upper: float, **kwargs) -> FakeQuantizer:
    q = FakeQuantizer(bits, "act", **kwargs)
    q.set_bounds(lower, upper)
    return q


def test_forward_matches_hand_computed_example():
    # 2 bits, l = -1, u = 2: N = 3, s = 1; (v_c - l)/s = 0, 0, .6, 1.5, 1.7, 2.5, 3, 3 -> round half-to-even.
    q = make(2, -1.0, 2.0)
    x = torch.tensor([-3.0, -1.0, -0.4, 0.5, 0.7, 1.5, 2.0, 5.0])
    assert q(x).tolist() == [-1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 2.0, 2.0]


def test_forward_levels_and_non_integer_step():
    q = make(3, -0.35, 0.29)  # N = 7, s = 0.64 / 7
    x = torch.linspace(-1, 1, 1001)
    out = q(x)
    s = (0.29 - (-0.35)) / 7
    expected = torch.round((x.clamp(-0.35, 0.29) + 0.35) / s) * s - 0.35
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert len(torch.unique(out)) == 8  # 2^b levels


def per_element_grads(q: FakeQuantizer, x: torch.Tensor):
    """d out_i / d x_i, d out_i / d u, d out_i / d l for each element i."""
    gv, gu, gl = [], [], []
    for i in range(x.numel()):
        v = x.clone().requires_grad_(True)
        q.zero_grad(set_to_none=True)
        q(v)[i].backward()
        gv.append(float(v.grad[i]))
        gu.append(float(q.upper.grad))
        gl.append(float(q.lower.grad))
    return gv, gu, gl


def test_gradients_follow_the_spec_table():
    lower, upper, bits = -1.0, 1.4, 2
    q = make(bits, lower, upper)
    n = 2 ** bits - 1
    s = (upper - lower) / n
    below = [-3.0, -1.2]
    inside = [-0.9, -0.3, 0.1, 0.35, 0.77, 1.3]
    above = [1.5, 4.0]
    x = torch.tensor(below + inside + above)
    gv, gu, gl = per_element_grads(q, x)
    # v < l: (0, 0, 1)
    for i in range(len(below)):
        assert (gv[i], gu[i], gl[i]) == (0.0, 0.0, 1.0)
    # l <= v <= u: (1, (round(q) - q)/N, (q - round(q))/N), q = (v - l)/s
    for j, v in enumerate(inside, start=len(below)):
        qv = (v - lower) / s
        assert gv[j] == 1.0
        assert gu[j] == pytest.approx((round(qv) - qv) / n, abs=1e-6)
        assert gl[j] == pytest.approx((qv - round(qv)) / n, abs=1e-6)
    # v > u: (0, 1, 0)
    for k in range(len(below) + len(inside), x.numel()):
        assert gv[k] == 0.0
        assert gu[k] == pytest.approx(1.0, abs=1e-6)
        assert gl[k] == pytest.approx(0.0, abs=1e-6)


def test_gradient_table_exact_values():
    # 2 bits, l = 0, u = 3: s = 1, q = v; v = 0.25 -> du = (0 - 0.25)/3, dl = 0.25/3; v = 1.75 -> du = 0.25/3.
    q = make(2, 0.0, 3.0)
    gv, gu, gl = per_element_grads(q, torch.tensor([0.25, 1.75]))
    assert gv == [1.0, 1.0]
    assert gu == pytest.approx([-0.25 / 3, 0.25 / 3], abs=1e-7)
    assert gl == pytest.approx([0.25 / 3, -0.25 / 3], abs=1e-7)


def test_boundary_elements_feed_the_bound_like_the_released_code():
    # v == l and v == u: v gets gradient 1 and the bound counts the element too (spec §2.4, [C]).
    q = make(2, -1.0, 2.0)
    gv, gu, gl = per_element_grads(q, torch.tensor([-1.0, 2.0]))
    assert gv == [1.0, 1.0]
    assert gl == pytest.approx([1.0, 0.0], abs=1e-6)
    assert gu == pytest.approx([0.0, 1.0], abs=1e-6)


def test_bound_gradients_sum_over_the_tensor_and_grad_scale_multiplies_them():
    x = torch.tensor([-3.0, -0.3, 0.35, 0.77, 4.0])
    q = make(2, -1.0, 1.4)
    q(x).sum().backward()
    gl, gu = float(q.lower.grad), float(q.upper.grad)
    g = lsq_grad_scale(x.numel(), 2)
    assert g == pytest.approx(1 / math.sqrt(5 * 1))
    scaled = make(2, -1.0, 1.4)
    scaled.grad_scale = g
    out = scaled(x)
    assert torch.equal(out, q(x))  # the factor changes gradients only
    out.sum().backward()
    assert float(scaled.lower.grad) == pytest.approx(g * gl, rel=1e-6)
    assert float(scaled.upper.grad) == pytest.approx(g * gu, rel=1e-6)


def test_per_channel_bounds_broadcast_along_the_axis():
    q = FakeQuantizer(2, "weight", per_channel_axis=0, channels=2)
    q.set_bounds(torch.tensor([0.0, -3.0]), torch.tensor([3.0, 0.0]))
    w = torch.tensor([[0.4, 2.6, 9.0], [-2.6, -0.4, 1.0]])
    assert q(w).tolist() == [[0.0, 3.0, 3.0], [-3.0, 0.0, 0.0]]
    w = w.clone().requires_grad_(True)
    q(w).sum().backward()
    assert q.lower.grad.shape == (2,) and q.upper.grad.tolist() == pytest.approx([1.0, 1.0])


def test_flags_identity_observer_and_uncalibrated():
    x = torch.randn(10)
    q = FakeQuantizer(4, "act")
    with pytest.raises(RuntimeError, match="before calibration"):
        q(x)
    seen = []
    q.observer = seen.append
    assert q(x) is x and seen[0] is x
    q.observer = None
    q.set_bounds(-0.5, 0.5)
    q.enabled = False
    assert q(x) is x
    q.enabled = True
    assert not torch.equal(q(x), x)


def test_bounds_validation_and_degenerate_range():
    q = FakeQuantizer(4, "act")
    with pytest.raises(ValueError):
        q.set_bounds(1.0, 0.0)
    with pytest.raises(ValueError):
        q.set_bounds(float("nan"), 1.0)
    q.set_bounds(0.7, 0.7)  # constant tensor: widened so that l < u, output still the constant
    assert q.lower.item() == pytest.approx(0.7) and q.upper.item() > q.lower.item()
    assert torch.equal(q(torch.full((5,), 0.7)), torch.full((5,), q.lower.item()))
    with pytest.raises(ValueError):
        FakeQuantizer(9, "act")
    with pytest.raises(ValueError):
        FakeQuantizer(4, "activation")


def test_quant_config_validation_and_tag():
    assert QuantConfig(4, 4).tag == "w4a4" and QuantConfig(w_bits=8, a_bits=6).tag == "w8a6"
    for bad in (1, 9, 4.0, True):
        with pytest.raises(ConfigError, match="w_bits"):
            QuantConfig(w_bits=bad)
    with pytest.raises(ConfigError, match="a_bits"):
        QuantConfig(a_bits=0)
