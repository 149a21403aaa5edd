"""The fake quantizer's training path (`_FakeQuantizeSTE`): one autograd node whose output and gradients equal
those of the autograd composite of spec §2.3 (`fake_quantize_reference`) bit for bit, so fine-tuned bounds do
not move by a single ulp (a fine-tuning run amplifies last-bit differences: docs/results.md, the demo matrix).

Checked on tensors (both the one-pass kernel and its torch-ops fallback; contiguous, permuted, non-dense and
per-channel inputs; every combination of what requires a gradient; PTQ4SR's gradient scale; 1 and 2 threads)
and on real fine-tuning: 2DQuant's DQC on the shipped SwinIR-light x2 and PTQ4SR's Pac on the shipped FSRCNN x2
(per-channel weights), QDrop's reconstruction on FSRCNN x2 and DQC on CARN-M x2 (random weights; its cascading
blocks call one residual block three times, so each of its quantizers runs three times per forward), whose bounds
and outputs after the steps must be identical with either path."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from bench.quant import fused
from bench.quant import quantizer as quantizer_module
from bench.quant.quantizer import STE_SWITCH, fake_quantize, fake_quantize_reference

REPO = Path(__file__).resolve().parents[1]
NEEDS = {"x, l, u": (True, True, True), "bounds only": (False, True, True), "x only": (True, False, False),
         "x and l": (True, True, False)}


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The one-pass backward kernel's runs as (values, parts) (None-returning calls, i.e. fallbacks, are not
    counted)."""
    calls = []
    original = fused.fused_ste_terms

    def counting(*args):
        terms = original(*args)
        if terms is not None:
            calls.append((args[1].numel(), args[5]))
        return terms
    monkeypatch.setattr(fused, "fused_ste_terms", counting)
    return calls


def _run(fn, x0, lower0, upper0, bits, needs, grad_scale=None, grad_of=None):
    x = x0.detach().clone().requires_grad_(needs[0])
    lower = lower0.detach().clone().requires_grad_(needs[1])
    upper = upper0.detach().clone().requires_grad_(needs[2])
    lo, up = lower, upper
    if grad_scale is not None:  # PTQ4SR's LSQ factor, as FakeQuantizer applies it
        lo, up = (quantizer_module._scale_grad(p, grad_scale) for p in (lower, upper))
    if lower0.dim():  # per-channel along axis 0, as FakeQuantizer._broadcast
        shape = [-1] + [1] * (x0.dim() - 1)
        lo, up = lo.view(shape), up.view(shape)
    out = fn(x, lo, up, bits)
    grad = grad_of(out) if grad_of is not None else torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    out.backward(grad)
    return out.detach(), [t.grad for t in (x, lower, upper)]


def _assert_same(got, want):
    assert torch.equal(got[0], want[0]) and got[0].stride() == want[0].stride()
    for g, w in zip(got[1], want[1]):
        assert (g is None) == (w is None)
        if g is not None:
            assert torch.equal(g, w) and g.stride() == w.stride(), (g - w).abs().max()


def _tensor(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    flat[:64] = 0.5            # repeated values
    flat[64:80] = -1.25        # exactly on the lower bound
    flat[80:96] = 2.5          # exactly on the upper bound
    return x


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("need", list(NEEDS))
@pytest.mark.parametrize("grad_scale", [None, 0.013])
def test_training_path_equals_the_autograd_composite_bit_for_bit(bits, need, grad_scale, threads, kernel_calls):
    x = _tensor((2, 3, 96, 96), seed=bits)  # 55,296 values: the one-pass kernel's size
    lower, upper = torch.tensor(-1.25), torch.tensor(2.5)
    want = _run(fake_quantize_reference, x, lower, upper, bits, NEEDS[need], grad_scale)
    got = _run(fake_quantize, x, lower, upper, bits, NEEDS[need], grad_scale)
    _assert_same(got, want)
    # the bounds need no gradient when neither requires one: the kernel then computes grad_x alone
    parts = {"x, l, u": "all", "bounds only": "bounds", "x only": "x", "x and l": "all"}[need]
    assert kernel_calls == ([(x.numel(), parts)] if fused.enabled() else [])


@pytest.mark.parametrize("layout", ["small", "transposed", "attention-operand", "incoming-grad-transposed",
                                    "incoming-grad-expanded", "per-channel"])
def test_every_layout_gives_the_composites_values_and_strides(layout, threads, kernel_calls):
    """Layouts whose terms torch lays out contiguously take the kernel (after a copy of x); the others, and
    per-channel bounds, take torch ops on x's own layout. Either way, the same numbers and strides."""
    g = torch.Generator().manual_seed(11)
    lower, upper = torch.tensor(-1.0), torch.tensor(1.5)
    grad_of = None
    x = _tensor((4, 6, 64, 40))
    if layout == "small":
        x = x[0, 0, :10]                                       # below the kernel's size: torch ops
    elif layout == "transposed":
        x = x.transpose(-1, -2)                                # dense, permuted
    elif layout == "attention-operand":                        # SwinIR's v: a non-dense view of the qkv output
        x = torch.randn(32, 64, 180, generator=g).reshape(32, 64, 3, 6, 10).permute(2, 0, 3, 1, 4)[2]
    elif layout == "incoming-grad-transposed":                 # the gradient arrives in another layout
        grad_of = lambda out: torch.randn(out.transpose(-1, -2).shape,  # noqa: E731
                                          generator=torch.Generator().manual_seed(5)).transpose(-1, -2)
    elif layout == "incoming-grad-expanded":                   # the gradient of a sum: stride 0
        grad_of = lambda out: torch.ones(()).expand(out.shape)  # noqa: E731
    elif layout == "per-channel":
        lower, upper = torch.linspace(-1.0, -0.5, 4), torch.linspace(1.0, 2.0, 4)
    want = _run(fake_quantize_reference, x, lower, upper, 4, NEEDS["x, l, u"], grad_of=grad_of)
    got = _run(fake_quantize, x, lower, upper, 4, NEEDS["x, l, u"], grad_of=grad_of)
    _assert_same(got, want)
    kernel = fused.enabled() and layout in ("transposed", "attention-operand")
    assert kernel_calls == ([(x.numel(), "all")] if kernel else [])


def test_without_the_kernel_the_torch_ops_give_the_same_gradients(monkeypatch, kernel_calls):
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    x = _tensor((2, 3, 96, 96))
    lower, upper = torch.tensor(-1.25), torch.tensor(2.5)
    _assert_same(_run(fake_quantize, x, lower, upper, 4, NEEDS["x, l, u"]),
                 _run(fake_quantize_reference, x, lower, upper, 4, NEEDS["x, l, u"]))
    assert kernel_calls == []


def test_the_switch_runs_the_composite(monkeypatch):
    monkeypatch.setenv(STE_SWITCH, "0")
    x = torch.randn(100, requires_grad=True)
    out = fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), 4)
    assert type(out.grad_fn).__name__ == "AddBackward0"  # the composite's last node, not _FakeQuantizeSTE's
    monkeypatch.setenv(STE_SWITCH, "1")
    assert "FakeQuantizeSTE" in type(fake_quantize(x, torch.tensor(-1.0), torch.tensor(1.0), 4).grad_fn).__name__


def _bounds(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for name, p in sorted(model.named_parameters())
                      if name.endswith(("lower", "upper"))])


def _fine_tune(model_name, method_name, params, scope, monkeypatch, composite: bool):
    from bench.data.calib import calibration_batch
    from bench.data.sample import sample_train_dir
    from bench.quant import CalibContext, quantize_with_method
    from methods.registry import create_method
    from models import create_model
    monkeypatch.setenv(STE_SWITCH, "0" if composite else "1")
    shipped = REPO / "models" / "weights" / f"{model_name}_x2.safetensors"
    torch.manual_seed(0)
    fp = create_model(model_name, 2, weights=shipped if shipped.is_file() else "random")
    folder = sample_train_dir()
    batch = calibration_batch(folder, 2, n=4, patch=32, seed=0)
    ctx = CalibContext(fp_model=fp, calib_batch=batch, train_dir=folder, seed=0, progress=False)
    qmodel, _ = quantize_with_method(fp, create_method(method_name, **params), 4, 4, ctx, scope=scope)
    with torch.no_grad():  # the output covers what the bounds do not: QDrop's learned rounding
        return torch.cat([_bounds(qmodel), qmodel.eval()(batch[:1]).reshape(-1)])


@pytest.mark.parametrize("model_name, method_name, params, scope", [
    ("swinir-light", "2dquant", {"preset": "paper", "iters": 3, "batch": 2, "patch": 32}, "2dquant"),
    ("fsrcnn", "ptq4sr", {"iters": 3, "batch": 2, "patch": 32}, "ptq4sr"),
    ("fsrcnn", "qdrop", {"iters": 4, "batch": 2}, "ptq4sr"),  # learned rounding + activation bounds, dropped quant
    ("carn-m", "2dquant", {"iters": 3, "batch": 2, "patch": 32}, "ptq4sr"),  # one block run 3 times per cascade
], ids=["swinir-light-dqc", "fsrcnn-pac", "fsrcnn-qdrop", "carn-m-dqc"])
def test_fine_tuned_bounds_are_identical_with_either_path(model_name, method_name, params, scope, monkeypatch,
                                                          kernel_calls):
    composite = _fine_tune(model_name, method_name, params, scope, monkeypatch, composite=True)
    assert kernel_calls == []
    one_node = _fine_tune(model_name, method_name, params, scope, monkeypatch, composite=False)
    assert torch.equal(one_node, composite)
    if fused.enabled() and model_name == "swinir-light":  # its activations (>= 16K values each) took the kernel
        assert len(kernel_calls) >= 3 * 24 * 8
    if fused.enabled() and method_name == "ptq4sr":  # Pac's weight phase: activations pass grad_x alone
        assert {parts for _, parts in kernel_calls} == {"all", "x"}
    # and the fine-tuning changed the model: a check of identical results that never trained would pass vacuously
    start = _fine_tune(model_name, method_name, {**params, "iters": 0}, scope, monkeypatch, composite=False)
    assert not torch.equal(start, composite)


def test_gradients_of_the_spec_table_on_a_hand_made_tensor():
    """Spec §2.4: per element, dv_q/dv = 1 inside [l, u] and 0 outside; dv_q/du = (round(q) - q)/N inside, 1 at
    v >= u; dv_q/dl = (q - round(q))/N inside, plus 1 at v <= l. Summed over the tensor."""
    lower, upper, bits = torch.tensor(-1.0, requires_grad=True), torch.tensor(2.0, requires_grad=True), 2  # s = 1
    values = torch.tensor([-3.0, -1.0, 0.25, 0.5, 1.75, 2.0, 5.0], requires_grad=True)
    fake_quantize(values, lower, upper, bits).sum().backward()
    q = torch.tensor([0.0, 1.25, 1.5, 2.75, 3.0])  # (v_c - l) / s of the elements inside [l, u]
    inside = torch.round(q) - q
    assert values.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert upper.grad.item() == pytest.approx(float(inside.sum()) / 3 + 2)     # v = 2.0 and v = 5.0 feed u
    assert lower.grad.item() == pytest.approx(float(-inside.sum()) / 3 + 2)    # v = -3.0 and v = -1.0 feed l


def test_every_combination_of_bits_and_needs_on_small_tensors(kernel_calls):
    for bits, need in itertools.product(range(2, 9), NEEDS.values()):
        x = _tensor((7, 13), seed=bits)
        lower, upper = torch.tensor(-1.25), torch.tensor(2.5)
        _assert_same(_run(fake_quantize, x, lower, upper, bits, need),
                     _run(fake_quantize_reference, x, lower, upper, bits, need))
    assert kernel_calls == []


def test_a_kernel_that_cannot_be_built_leaves_the_gradients_unchanged(monkeypatch, kernel_calls):
    """No C++ compiler: one warning naming the switch, then torch ops for the backward terms, same numbers."""
    def no_compiler(_parts):
        raise RuntimeError("Compiler: cc is not found")
    monkeypatch.setattr(fused, "_ste_compiled", no_compiler)
    monkeypatch.setattr(fused, "_failed", False)
    x = _tensor((2, 3, 96, 96))
    lower, upper = torch.tensor(-1.25), torch.tensor(2.5)
    with pytest.warns(RuntimeWarning, match=fused.ENV_SWITCH):
        got = _run(fake_quantize, x, lower, upper, 4, NEEDS["x, l, u"])
    assert not fused.enabled()
    _assert_same(got, _run(fake_quantize_reference, x, lower, upper, 4, NEEDS["x, l, u"]))
    assert kernel_calls == []


def test_a_quantizer_called_several_times_per_forward_accumulates_as_the_composite(kernel_calls):
    """Three calls on one pair of bounds (CARN-M's shared block): autograd adds each call's terms to the bounds'
    buffer one by one; summing them inside the node first differs in the last bit (4 of 20 seeds did)."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        xs = [torch.randn(2, 3, 96, 96, generator=g) * 3 for _ in range(3)]
        grads = []
        for fn in (fake_quantize_reference, fake_quantize):
            lower = torch.tensor(-1.25, requires_grad=True)
            upper = torch.tensor(2.5, requires_grad=True)
            out = sum(fn(x, lower, upper, 4) * (i + 1) for i, x in enumerate(xs))
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
            grads.append((lower.grad, upper.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1]), seed
    assert len(kernel_calls) == (60 if fused.enabled() else 0)
