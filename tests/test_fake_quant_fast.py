"""Inference fast paths of FakeQuantizer: chunked in-place activations and cached weights give the reference
formula's numbers bit for bit, gradients are untouched, and the cache is invalidated when it must be."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.quant import CalibContext, FakeQuantizer, fused, quantize_with_method
from bench.quant import quantizer as quantizer_module
from bench.quant.quantizer import fake_quantize_inference, fake_quantize_reference
from methods.registry import create_method

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _reference(x, lower, upper, bits):
    with torch.no_grad():
        return fake_quantize_reference(x, lower, upper, bits)


@pytest.fixture(params=["fused", "torch-ops"])
def kernel(request, monkeypatch):
    """Both inference kernels: the compiled one-pass kernel and the chunked torch ops it falls back to.
    Returns (name, calls): calls counts the compiled kernel's runs, so a test can check which one ran."""
    if request.param == "torch-ops":
        monkeypatch.setenv(fused.ENV_SWITCH, "0")
    elif not _fused_kernel_builds():
        pytest.skip("TorchInductor could not build the fused kernel here (no C++ compiler); torch ops are used")
    calls = []
    compiled = fused._compiled

    def counting():
        kernel_fn = compiled()
        return lambda *args: calls.append(1) or kernel_fn(*args)
    monkeypatch.setattr(fused, "_compiled", counting)
    return request.param, calls


def _fused_kernel_builds() -> bool:
    x = torch.linspace(-1, 1, fused.MIN_ELEMENTS)
    built = fused.fused_fake_quantize(x, torch.tensor(-0.5), torch.tensor(0.5), torch.tensor(1 / 15)) is not None
    # where a compiler is on PATH (CI, the README's set-up) the kernel must build: no silent fallback there
    assert built or not (shutil.which("g++") or shutil.which("c++")), "fused kernel failed beside a C++ compiler"
    return built


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "channels-last", "strided", "small",
                                    "channel-slice-of-one", "attention-operand"])
def test_inference_path_equals_the_reference_formula_bit_for_bit(bits, layout, kernel):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(3, 700, 200, generator=g) * 3
    if layout == "transposed":
        x = x.transpose(-2, -1)           # SwinIR's k^T operand
    elif layout == "channels-last":
        x = x.permute(2, 0, 1)            # an HWC image seen as CHW (bench.inference.to_tensor)
    elif layout == "strided":
        x = x[:, ::2, :]
    elif layout == "channel-slice-of-one":
        x = x[:1, :500]                   # IMDN's channel split of a batch of one: contiguous, odd size-1 stride
    elif layout == "small":
        x = x[0, :10]
    elif layout == "attention-operand":  # SwinIR's k^T: a non-dense view of the qkv output (bw, heads, hd, N)
        qkv = torch.randn(64, 64, 180, generator=g).reshape(64, 64, 3, 6, 10).permute(2, 0, 3, 1, 4)
        x = qkv[1].transpose(-2, -1)
    lower, upper = torch.tensor(-2.3), torch.tensor(4.1)
    got = fake_quantize_inference(x, lower, upper, bits)
    want = _reference(x, lower, upper, bits)
    assert got.shape == want.shape and torch.equal(got, want)  # max |delta| = 0, not just <= 1 ulp of the step
    assert got.stride() == want.stride()  # the layout too: downstream convs choose their kernel by it
    name, calls = kernel
    assert len(calls) == (1 if name == "fused" and x.numel() >= fused.MIN_ELEMENTS else 0)  # that kernel ran


def _rewrite_sensitive_inputs(lower: float, upper: float, bits: int) -> tuple[np.ndarray, int, int]:
    """float32 inputs around every rounding midpoint, with how many of them would get another value if the
    division were computed as x * (1/s), and how many levels s * r + l would change under a fused multiply-add."""
    lo, hi = np.float32(lower), np.float32(upper)
    step = np.float32((hi - lo) / np.float32(2 ** bits - 1))
    mids = lo + (np.arange(2 ** bits - 1, dtype=np.float32) + np.float32(0.5)) * step
    x = np.concatenate([mids] + [np.nextafter(mids, np.float32(d * np.inf)) for d in (-1, 1)])
    for _ in range(6):  # up to +-7 ulps around each midpoint
        x = np.unique(np.concatenate([x, np.nextafter(x, np.float32(-np.inf)), np.nextafter(x, np.float32(np.inf))]))
    shifted = np.clip(x, lo, hi) - lo
    by_division = np.rint(shifted / step)
    by_reciprocal = np.rint(shifted * (np.float32(1) / step))
    levels = np.arange(2 ** bits, dtype=np.float32)
    two_roundings = levels * step + lo
    one_rounding = (levels.astype(np.float64) * np.float64(step) + np.float64(lo)).astype(np.float32)
    return x, int((by_division != by_reciprocal).sum()), int((two_roundings != one_rounding).sum())


@pytest.mark.parametrize("bits", [4, 8])
def test_fused_kernel_keeps_the_division_and_the_separate_multiply_add(bits, kernel):
    """A compiler allowed to rewrite x / s as x * (1/s), or s * r + l as one fused multiply-add, would change
    codes on these inputs; the fused kernel must give the reference's numbers on every one of them."""
    values, reciprocal_changes, fma_changes = _rewrite_sensitive_inputs(-2.3, 4.1, bits)
    assert reciprocal_changes > 0 and fma_changes > 0  # the inputs can catch both rewrites
    x = torch.from_numpy(np.resize(values, max(values.size, 4 * fused.MIN_ELEMENTS)))
    lower, upper = torch.tensor(-2.3), torch.tensor(4.1)
    got = fake_quantize_inference(x, lower, upper, bits)
    assert torch.equal(got, _reference(x, lower, upper, bits))
    name, calls = kernel
    assert len(calls) == (name == "fused")
    if name == "fused":
        step = torch.clamp((upper - lower) / (2 ** bits - 1), min=1e-12)
        assert torch.equal(fused.fused_fake_quantize(x, lower, upper, step), got)


def test_inference_path_per_channel_and_degenerate_bounds():
    x = torch.randn(8, 5, 3, 3, generator=torch.Generator().manual_seed(1))
    lower = torch.linspace(-1, -0.1, 8).view(8, 1, 1, 1)
    upper = torch.linspace(0.2, 2, 8).view(8, 1, 1, 1)
    assert torch.equal(fake_quantize_inference(x, lower, upper, 3), _reference(x, lower, upper, 3))
    flat = torch.full((300_000,), 0.5)
    zero = torch.tensor(0.5)
    assert torch.equal(fake_quantize_inference(flat, zero, zero, 4), _reference(flat, zero, zero, 4))


def test_quantizer_forward_uses_the_fast_path_only_without_autograd(monkeypatch):
    q = FakeQuantizer(4, "act")
    q.set_bounds(-1.0, 1.0)
    x = torch.randn(1000, requires_grad=True)
    calls = []
    original = quantizer_module.fake_quantize_inference
    monkeypatch.setattr(quantizer_module, "fake_quantize_inference", lambda *a: calls.append(1) or original(*a))
    y = q(x)                        # autograd on: the reference path, gradients flow to x and the bounds
    y.sum().backward()
    assert not calls and x.grad is not None and q.lower.grad is not None
    with torch.no_grad():
        z = q(x)
    assert calls == [1] and torch.equal(z, y.detach())


def test_weight_cache_is_reused_and_invalidated_by_bounds_weights_and_training():
    w = torch.nn.Parameter(torch.randn(16, 8), requires_grad=False)
    q = FakeQuantizer(4, "weight", per_channel_axis=0, channels=16)
    q.set_bounds(w.amin(1), w.amax(1))
    q.eval()
    with torch.no_grad():
        first = q(w)
        assert q(w) is first                                   # cached
        q.set_bounds(w.amin(1) * 0.5, w.amax(1) * 0.5)          # bounds changed: recomputed
        second = q(w)
        assert second is not first
        assert torch.equal(second, _reference(w, q.lower.view(-1, 1), q.upper.view(-1, 1), 4))
        w.mul_(2)                                              # weight changed in place: recomputed
        assert not torch.equal(q(w), second)
        q.train()                                              # training mode never caches
        assert q(w) is not q(w)
    q.eval()
    q.lower.requires_grad_(True)
    out = q(w)                                                 # autograd on with learnable bounds: no cache
    assert out.requires_grad and q._cached is None


def test_weight_cache_does_not_travel_with_a_copy():
    import copy
    w = torch.randn(4, 4)
    q = FakeQuantizer(3, "weight")
    q.set_bounds(-1.0, 1.0)
    q.eval()
    with torch.no_grad():
        q(w)
    assert q._cached is not None and copy.deepcopy(q)._cached is None


def test_imdn_x2_w4a4_dobi_set5_psnr_unchanged(weights_dir, benchmark_root, train_root, monkeypatch):
    """The fast paths and DOBI's streamed search together leave the committed Set5 PSNR unchanged (0.001 dB)."""
    from bench.data.calib import calibration_batch
    from bench.data.dataset import load_dataset
    from bench.evaluate import evaluate
    from bench.quant import CalibContext, quantize_with_method
    from methods.registry import create_method
    from models import create_model
    fp = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    batch = calibration_batch(train_root, 2, n=32, patch=64, seed=0)
    qmodel, _ = quantize_with_method(fp, create_method("dobi"), 4, 4, CalibContext(calib_batch=batch, progress=False))
    set5 = load_dataset("Set5", 2, data_root=benchmark_root)
    fast = evaluate(qmodel, set5, 2, "cpu", lpips=False, progress=False).psnr
    records = REPO / "results/reference/runs/imdn-w4a4/records.jsonl"  # the run behind results/reference/imdn-w4a4.md
    committed = next(r["psnr"] for r in map(json.loads, records.open()) if r["key"] == "imdn/x2/dobi/W4A4/Set5")
    assert fast == pytest.approx(committed, abs=1e-3)
    # the reference formula on the same bounds gives the same PSNR (same numbers, not just close)
    monkeypatch.setattr(FakeQuantizer, "_forward_inference",
                        lambda self, x: fake_quantize_reference(x, self._broadcast(self.lower, x),
                                                                self._broadcast(self.upper, x), self.bits))
    assert evaluate(qmodel, set5, 2, "cpu", lpips=False, progress=False).psnr == fast


def test_a_kernel_that_cannot_be_built_falls_back_to_torch_ops_with_one_warning(monkeypatch):
    """No C++ compiler (or a broken Inductor): one warning naming the switch, then torch ops, same numbers."""
    def no_compiler():
        raise RuntimeError("Compiler: cc is not found")
    monkeypatch.setattr(fused, "_compiled", no_compiler)
    monkeypatch.setattr(fused, "_failed", False)
    x = torch.randn(4 * fused.MIN_ELEMENTS, generator=torch.Generator().manual_seed(3))
    lower, upper = torch.tensor(-1.5), torch.tensor(2.0)
    with pytest.warns(RuntimeWarning, match=fused.ENV_SWITCH):
        first = fake_quantize_inference(x, lower, upper, 4)
    assert not fused.enabled()
    assert torch.equal(first, _reference(x, lower, upper, 4))
    assert torch.equal(fake_quantize_inference(x.view(64, -1).t(), lower, upper, 4),
                       _reference(x.view(64, -1).t(), lower, upper, 4))  # strided, no second attempt


def test_split_qkv_with_one_input_quantization_runs_the_fused_gemm_with_the_same_output(monkeypatch):
    """SwinIR-light's q, k and v parts share one input. With the same input bounds (every range rule gives them),
    inference quantizes it once and runs one GEMM: the model output is bit-equal to the three-part path. With
    different bounds (fine-tuned parts), or autograd on, or a capture observing, each part runs on its own."""
    from bench.quant import layers
    from models import create_model
    torch.manual_seed(0)
    fp = create_model("swinir-light", 2, weights="random").eval()
    batch = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    qmodel, _ = quantize_with_method(fp, create_method("minmax"), 4, 4, CalibContext(calib_batch=batch, progress=False))
    qmodel.eval()
    splits = [m for m in qmodel.modules() if isinstance(m, layers.SplitQuantLinear)]
    assert len(splits) == 24 and all(layers._one_input_quantization([getattr(s, n) for n in s.part_names])
                                     for s in splits)
    fused_calls = []
    original = nn.functional.linear
    monkeypatch.setattr(nn.functional, "linear", lambda x, w, b=None: fused_calls.append(w.shape[0]) or original(x, w, b))
    with torch.no_grad():
        fused = qmodel(batch)
    # per block one (180 x 60) GEMM for q, k and v, then proj, fc1 and fc2: the FP model's 4 GEMMs, not 6
    assert fused_calls.count(180) == 24 and len(fused_calls) == 24 * 4
    monkeypatch.setattr(layers, "_one_input_quantization", lambda parts: False)
    with torch.no_grad():
        separate = qmodel(batch)
    assert torch.equal(fused, separate)
    monkeypatch.undo()
    k = splits[0].k.input_quant
    k.set_bounds(float(k.lower.detach()) * 0.5, float(k.upper.detach()) * 0.5)   # its own bounds: no shared path
    assert not layers._one_input_quantization([getattr(splits[0], n) for n in splits[0].part_names])
    with torch.no_grad():
        assert not torch.equal(qmodel(batch), fused)
