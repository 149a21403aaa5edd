"""CompSRT and the core's weight-transform contract: the Hadamard rotation is exact (orthonormal on the padded size,
the FP output unchanged with the quantizers off), a layer without a transform is bit-identical to before, the
scale-offset quantizer equals the uniform one at alpha = beta = 0 and its own formula otherwise, calibration runs on a
CNN (Conv2d) and on SwinIR-light (Linear), and the saved file and the packed export give the same model bit for bit."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.export.onnx_qdq import _check_exportable
from bench.export.packed import load_packed, save_packed
from bench.quant import CalibContext, load_quantized, quantize_with_method, quantizers, save_quantized
from bench.quant.quantizer import FakeQuantizer
from bench.quant.scale_offset import ScaleOffsetQuantizer
from bench.quant.surgery import QuantConfig, quantize_model, set_quant_enabled, weight_quantizers
from bench.quant.transforms import HadamardTransform, hadamard_matrix, set_weight_transform, weight_transforms
from methods.compsrt import CompSRT, magnitude_mask
from methods.minmax import MinMax

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCNN(nn.Module):
    """Three convs with 3 -> 6 -> 5 -> 3 channels: 6 and 5 input channels are padded to 8."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(5, 3, 3, padding=1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))) + x


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.mark.parametrize("n", [1, 2, 8, 64, 128])
def test_hadamard_matrix_is_orthonormal_and_symmetric(n):
    h = hadamard_matrix(n, torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.T)
    assert torch.all(h.abs() == 1 / n ** 0.5)  # +-1/sqrt(n): a Hadamard matrix, not any rotation


def test_hadamard_matrix_refuses_other_sizes():
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard_matrix(6)


def test_rotation_pads_the_input_dimension_and_inverts():
    w = torch.randn(7, 60, generator=torch.Generator().manual_seed(1))
    t = HadamardTransform(dim=1)
    rotated = t.forward(w)
    assert rotated.shape == (7, 64)
    # the padded rotation is W_pad H: row norms are kept (H orthonormal), and its first column is the row sum / 8
    assert torch.allclose(rotated.norm(dim=1), w.norm(dim=1), rtol=1e-6)
    assert torch.allclose(rotated[:, 0], w.sum(dim=1) / 8, atol=1e-5)
    assert torch.allclose(t.inverse(rotated, w.shape), w, atol=1e-6)
    conv = torch.randn(4, 6, 3, 3, generator=torch.Generator().manual_seed(2))
    assert t.forward(conv).shape == (4, 8, 3, 3)
    assert torch.allclose(t.inverse(t.forward(conv), conv.shape), conv, atol=1e-6)


def test_fp_output_unchanged_with_quantizers_off_cnn_and_linear(swinir_random, tiny_batch):
    for model, x in ((tiny_cnn(), torch.rand(2, 3, 8, 8)), (swinir_random, tiny_batch)):
        qmodel = quantize_model(model, QuantConfig(4, 4))
        for path, layer in [(p, m) for p, m in qmodel.named_modules() if hasattr(m, "quantized_weight")]:
            set_weight_transform(qmodel, path, HadamardTransform())
        assert weight_transforms(qmodel)
        set_quant_enabled(qmodel, False)
        with torch.no_grad():
            ref, out = model(x), qmodel(x)
        # T^-1(T(W)) = W up to float32 rounding, so the FP output moves by rounding only
        assert (out - ref).abs().max() < 1e-5


def test_no_transform_is_bit_identical_and_weight_quantizers_see_the_rotation():
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx = CalibContext(calib_batch=x, progress=False)
    plain, _ = quantize_with_method(model, MinMax(), 4, 4, ctx)
    reference = plain(x)
    assert all(getattr(m, "weight_transform", None) is None for m in plain.modules())
    q = quantize_model(model, QuantConfig(4, 4))
    set_weight_transform(q, "b", HadamardTransform())
    seen = {name: w.shape for name, _, w in weight_quantizers(q)}
    assert seen["b.weight_quant"] == (5, 8, 3, 3) and seen["c.weight_quant"] == (3, 5, 3, 3)
    again, _ = quantize_with_method(model, MinMax(), 4, 4, CalibContext(calib_batch=x, progress=False))
    assert torch.equal(again(x), reference)


def test_transform_must_keep_output_channels():
    q = quantize_model(tiny_cnn(), QuantConfig(4, 4))
    with pytest.raises(ConfigError, match="dimension 0"):
        set_weight_transform(q, "b", _RowPad())
    with pytest.raises(ConfigError, match="not a quantized Linear or Conv2d"):
        set_weight_transform(q, "", HadamardTransform())


class _RowPad(HadamardTransform):
    def forward(self, w):
        return nn.functional.pad(w.movedim(0, -1), (0, 1)).movedim(-1, 0)


def test_scale_offset_is_uniform_at_zero_and_its_formula_otherwise():
    x = torch.linspace(-1.3, 1.3, 27)
    so = ScaleOffsetQuantizer(2, "act")
    so.set_bounds(-1.0, 1.0)
    plain = FakeQuantizer(2, "act")
    plain.set_bounds(-1.0, 1.0)
    with torch.no_grad():
        assert torch.equal(so(x), plain(x))
    so.alpha.requires_grad_(True)  # the training path (alpha, beta learnable): the same values at 0, up to the
    assert torch.allclose(so(x).detach(), plain(x).detach(), atol=1e-6)  # float32 rounding of u = l + N s
    so.alpha.requires_grad_(False)
    so.set_units("absolute")  # the released code's units: alpha and beta in the tensor's own units
    with torch.no_grad():
        so.alpha.fill_(0.1)   # s = 2/3 + 0.1 = 0.7667
        so.beta.fill_(-0.5)   # Z = -1.5
    # clip to [-1, 1]; codes round((c + 1.5)/0.7667) clamped to 0..3: -1 -> 1 (0.65), 1 -> 3 (3.26)
    out = so(torch.tensor([-2.0, -1.0, 0.0, 1.0]))
    s, z = 2 / 3 + 0.1, -1.5
    expected = torch.tensor([z + s, z + s, z + 2 * s, z + 3 * s])
    assert torch.allclose(out, expected, atol=1e-6)
    # an offset that would reach code 4 is clamped to 3 (b bits hold 0..3)
    with torch.no_grad():
        so.beta.fill_(-1.0)   # Z = -2: 1 -> round(3/0.7667 = 3.91) = 4 -> 3
    assert torch.allclose(so(torch.tensor([1.0])), torch.tensor([-2.0 + 3 * s]), atol=1e-6)
    assert float(so.codes(torch.tensor([1.0]))) == 3.0
    so.set_units("step")  # the default: fractions of the step 2/3, so s = 2/3 * 1.1, Z = -1 - 2/3
    with torch.no_grad():
        so.beta.fill_(-1.0)
    s, z = 2 / 3 * 1.1, -1 - 2 / 3
    assert torch.allclose(so(torch.tensor([-1.0, 1.0])), torch.tensor([z + s, z + 3 * s]), atol=1e-6)
    assert float(so.quant_state()["step_units"]) == 1.0


def test_magnitude_mask_keeps_the_largest_fraction():
    v = torch.tensor([[0.1, -0.5, 0.3, -0.05, 0.2]])
    assert magnitude_mask(v, 0.6).tolist() == [[False, True, True, False, True]]
    assert magnitude_mask(v, 1.0).all()


def _calibrated(model, x, bits=4, **params):
    ctx = CalibContext(calib_batch=x, progress=False)
    method = CompSRT(iters=3, batch=2, patch=8, K=20, **params)
    qmodel, _ = quantize_with_method(model, method, bits, bits, ctx)
    return qmodel, method


def test_compsrt_calibrates_a_cnn_and_round_trips(tmp_path):
    model = tiny_cnn()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    qmodel, method = _calibrated(model, x, keep=0.6)
    assert set(weight_transforms(qmodel)) == {"a", "b", "c"}
    assert all(q.quant_type == "scale-offset" for _, q in quantizers(qmodel))
    assert any(float(q.alpha.abs().max()) > 0 for _, q in quantizers(qmodel))  # DQC moved the offsets
    record = method.describe()
    assert record["rotation"]["layers"] == 3 and record["rotation"]["padded_layers"] == 3
    assert record["rotation"]["pruned_fraction"] == pytest.approx(0.4, abs=0.02)
    with torch.no_grad():
        out = qmodel(x)
    path = save_quantized(qmodel, tmp_path / "q.pt", {"method": "compsrt"})
    loaded = load_quantized(path, model).eval()
    assert set(weight_transforms(loaded)) == {"a", "b", "c"}
    assert torch.equal(weight_transforms(loaded)["b"].mask, weight_transforms(qmodel)["b"].mask)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
    packed = load_packed(save_packed(qmodel, tmp_path / "q.safetensors").path, model).eval()
    with torch.no_grad():
        assert torch.equal(packed(x), out)
    with pytest.raises(ConfigError, match="weight transform.*--format packed"):
        _check_exportable(qmodel)


def test_compsrt_calibrates_swinir_linears_and_round_trips(tmp_path, swinir_random, tiny_batch):
    qmodel, method = _calibrated(swinir_random, tiny_batch.repeat(2, 1, 1, 1), bits=2)
    transforms = weight_transforms(qmodel)
    assert "layers.0.residual_group.blocks.0.attn.qkv.q" in transforms  # each part of a split qkv on its own
    assert method.describe()["rotation"]["padded_layers"] > 0  # 60 features -> 64
    with torch.no_grad():
        out = qmodel(tiny_batch)
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "s.pt"), swinir_random).eval()
    with torch.no_grad():
        assert torch.equal(loaded(tiny_batch), out)


def test_a_file_without_transforms_stays_version_2(tmp_path):
    model = tiny_cnn()
    x = torch.rand(2, 3, 8, 8)
    qmodel, _ = quantize_with_method(model, MinMax(), 4, 4, CalibContext(calib_batch=x, progress=False))
    record = torch.load(save_quantized(qmodel, tmp_path / "m.pt"), weights_only=True)
    assert record["version"] == 2 and "transforms" not in record


def test_compsrt_refuses_a_bad_keep():
    with pytest.raises(ConfigError, match="keep=0.0 must be in"):
        CompSRT(keep=0.0)


def test_rotated_activation_quantizer_rounds_in_the_hadamard_domain():
    from bench.quant.rotated_quantizer import RotatedScaleOffsetQuantizer
    x = torch.randn(3, 5, 6, generator=torch.Generator().manual_seed(5))
    q = RotatedScaleOffsetQuantizer(4, "act")
    q.set_rotation(-1)
    seen = []
    q.observer = seen.append
    assert q(x) is x and seen[0].shape == (3, 5, 8)  # the observer sees T(x), features padded 6 -> 8
    q.observer = None
    q.set_bounds(float(seen[0].min()), float(seen[0].max()))
    t, plain = HadamardTransform(dim=-1), FakeQuantizer(4, "act")
    plain.set_bounds(float(seen[0].min()), float(seen[0].max()))
    with torch.no_grad():
        assert torch.equal(q(x), t.inverse(plain(t.forward(x)), x.shape))
        assert not torch.equal(q(x), plain(x))


def test_compsrt_rotate_acts_calibrates_and_round_trips(tmp_path):
    model = tiny_cnn()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    qmodel, _ = _calibrated(model, x, rotate_acts=True)
    acts = [q for _, q in quantizers(qmodel) if not q.is_weight]
    assert all(q.quant_type == "rotated-scale-offset" and q.rotate_axis == 1 for q in acts)
    with torch.no_grad():
        out = qmodel(x)
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "r.pt"), model).eval()
    packed = load_packed(save_packed(qmodel, tmp_path / "r.safetensors").path, model).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), out) and torch.equal(packed(x), out)
