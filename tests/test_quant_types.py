"""The non-uniform quantizer types: log2 / log-sqrt2 (RepQ-ViT) and twin-uniform (PTQ4ViT)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bench.cost import analyze, count_layer_macs, quantizer_scalars
from bench.errors import ConfigError
from bench.quant import FakeQuantizer, QuantConfig, list_quantizer_types, make_quantizer, quantize_model, quantizers
from bench.quant.io import load_quantized, save_quantized
from bench.quant.log_quantizer import log_powers
from bench.quant.qtypes import replace_quantizer
from bench.quant.twin_uniform import codes_per_range
from methods.ptq4vit import gelu_shift


def _log(name: str, bits: int, scale: float, signed: bool = False):
    q = make_quantizer(name, FakeQuantizer(bits, "act_softmax"))
    q.set_scale(scale, signed)
    return q


def _exponents(out: torch.Tensor, scale: float, log2_base: float) -> torch.Tensor:
    """k with |out| = scale * B^-k, as floats (integers when out is a power of B)."""
    return -torch.log2(out.abs().double() / scale) / log2_base


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_log_sqrt2_outputs_are_powers_of_sqrt2_or_zero(bits):
    torch.manual_seed(0)
    scale = 0.8
    x = torch.cat([torch.rand(20000) ** 6, torch.tensor([0.0, 1e-30, scale, 0.9, 2.0])])
    q = _log("log-sqrt2", bits, scale)
    out = q(x)
    nonzero = out != 0
    k = _exponents(out[nonzero], scale, 0.5)
    assert torch.allclose(k, k.round(), atol=1e-5), "every non-zero output is scale * sqrt(2)^-k"
    assert int(k.round().min()) == 0 and int(k.round().max()) <= log_powers(bits, False) - 1
    assert out.unique().numel() <= 2 ** bits  # P powers and zero: b bits
    if bits <= 4:  # (at 8 bits the last powers, sqrt(2)^-254, are below float32's range: not reached)
        assert int(k.round().max()) == log_powers(bits, False) - 1 and out.unique().numel() == 2 ** bits
    assert float(out[-3]) == pytest.approx(scale) and float(out[-1]) == pytest.approx(scale)  # clipped to s
    assert float(out[-5]) == 0.0 and (float(out[-4]) == 0.0) == (bits <= 4)  # 1e-30 is a level at 8 bits
    # nearest level in the exponent (log-domain rounding), zero past the last power
    inside = (x > 0) & (x <= scale)
    exact = -2 * torch.log2(x[inside].double() / scale)
    expected_k = exact.round()
    expected = torch.where(expected_k >= log_powers(bits, False), torch.zeros_like(exact),
                           scale * 2.0 ** (-expected_k / 2))
    assert torch.allclose(out[inside].double(), expected, rtol=1e-6, atol=0)


def test_log_sqrt2_signed_and_log2():
    torch.manual_seed(1)
    x = torch.randn(5000)
    q = _log("log-sqrt2", 4, 1.5, signed=True)
    out = q(x)
    assert float(q.lower.detach()) == -1.5 and float(q.upper.detach()) == 1.5  # the covered range
    assert torch.equal(torch.sign(out[out != 0]), torch.sign(x[out != 0]))
    k = _exponents(out[out != 0], 1.5, 0.5)
    assert torch.allclose(k, k.round(), atol=1e-5) and int(k.round().max()) == log_powers(4, True) - 1
    assert out.abs().unique().numel() == 2 ** 3  # 7 powers and 0 in the 3 magnitude bits
    q2 = _log("log2", 4, 1.0)
    out2 = q2(torch.rand(5000))
    k2 = _exponents(out2[out2 != 0], 1.0, 1.0)
    assert torch.equal(k2, k2.round())  # powers of two are exact in float32


def test_log_quantizer_straight_through_gradient():
    q = _log("log-sqrt2", 4, 0.5)
    x = torch.tensor([-0.1, 0.0, 0.2, 0.5, 0.7], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("bits,shift", [(4, 0), (4, 3), (6, 7), (8, 12)])
def test_twin_uniform_softmax_steps_differ_by_two_to_the_shift(bits, shift):
    torch.manual_seed(2)
    q = make_quantizer("twin-uniform", FakeQuantizer(bits, "act_softmax"))
    q.set_twin(1.0, shift, signed=False)
    d1, d2 = q.steps()
    assert d2 / d1 == 2.0 ** shift  # exactly
    c = codes_per_range(bits)
    assert float(q.lower.detach()) == 0.0 and float(q.upper.detach()) == 1.0 and d2 * c == pytest.approx(1.0)
    x = torch.softmax(torch.randn(64, 64) * 4, dim=-1).reshape(-1)
    out = q(x).double()
    small = x.double() < (c + 1) * d1
    # R1: multiples of D1 up to c D1, error <= D1 / 2 inside R1's covered part
    codes1 = out[small] / d1
    assert torch.allclose(codes1, codes1.round(), atol=1e-4) and float(codes1.max()) <= c
    covered = x.double() <= c * d1
    assert float((out - x.double())[covered].abs().max()) <= d1 / 2 + 1e-7
    assert bool((~small).any()) == (shift > 0)  # with shift 0 both ranges are one grid and R1 takes everything
    if shift:
        codes2 = out[~small] / d2
        assert torch.allclose(codes2, codes2.round(), atol=1e-4)
        assert float((out - x.double())[~small].abs().max()) <= d2 / 2 + 1e-7  # R2 covers [0, 1]


def test_twin_uniform_gelu_negative_values_in_their_own_range():
    torch.manual_seed(3)
    x = nn.functional.gelu(torch.randn(20000) * 2)
    bits, c = 4, codes_per_range(4)
    step2 = float(x.max()) / c
    shift = gelu_shift(step2, float(x.min()), bits)
    q = make_quantizer("twin-uniform", FakeQuantizer(bits, "act_gelu"))
    q.set_twin(step2 * c, shift, signed=True)
    d1, d2 = q.steps()
    assert d2 / d1 == 2.0 ** shift and shift > 0
    assert c * d1 >= -float(x.min()) > c * d1 / 2  # R1 covers the negatives with the finest power-of-two step
    assert float(q.lower.detach()) == pytest.approx(-c * d1) and float(q.lower.detach()) <= float(x.min())
    assert float(q.upper.detach()) >= float(x.max())  # the ranges cover the tensor
    out = q(x).double()
    neg = x < 0
    assert float(out[neg].max()) <= 0 and float((out - x.double())[neg].abs().max()) <= d1 / 2 + 1e-7
    assert float((out - x.double())[~neg].abs().max()) <= d2 / 2 + 1e-6
    codes = out[neg] / d1
    assert torch.allclose(codes, codes.round(), atol=1e-4)


def _toy_transformer() -> nn.Module:
    from models.layers import MatMul

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)
            self.mm = MatMul()

        def forward(self, x):
            h = self.fc(x.flatten(2).transpose(1, 2))
            a = torch.softmax(self.mm(h, h.transpose(1, 2)), dim=-1)
            return x + (a @ h).transpose(1, 2).reshape(x.shape)

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), Block(), nn.Conv2d(8, 3, 3, padding=1)).eval()


def test_types_survive_save_and_load_and_are_costed_at_their_bits(tmp_path):
    fp = _toy_transformer()
    qmodel = quantize_model(fp, QuantConfig(4, 4, scope="ptq4sr"))
    for _, q in quantizers(qmodel):
        q.set_bounds(-1.0, 1.0)
    names = [name for name, q in quantizers(qmodel) if not q.is_weight][:2]
    log = make_quantizer("log-sqrt2", quantizers(qmodel)[1][1])
    log.set_scale(0.9)
    twin = make_quantizer("twin-uniform", dict(quantizers(qmodel))[names[1]])
    twin.set_twin(2.0, 5, signed=True)
    replace_quantizer(qmodel, names[0], log)
    replace_quantizer(qmodel, names[1], twin)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        expected = qmodel(x)
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "q.pt"), fp)
    got = dict(quantizers(loaded))
    assert got[names[0]].quant_type == "log-sqrt2" and got[names[1]].quant_type == "twin-uniform"
    assert got[names[1]].shift == 5
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    # cost: a b-bit log or twin quantizer stores b bits per activation; the twin's shift is one more scalar
    layers = count_layer_macs(fp, (6, 6))
    uniform = quantize_model(fp, QuantConfig(4, 4, scope="ptq4sr"))
    report, reference = analyze(fp, "toy", 1, qmodel, (6, 6), layers), analyze(fp, "toy", 1, uniform, (6, 6), layers)
    assert [lc.operand_bits for lc in report.layers] == [lc.operand_bits for lc in reference.layers]
    assert report.ops() == reference.ops()
    assert quantizer_scalars(qmodel) == quantizer_scalars(uniform) + 1


def test_registered_types():
    assert {"uniform", "log2", "log-sqrt2", "twin-uniform"} <= set(list_quantizer_types())
    with pytest.raises(ValueError, match="per-tensor"):
        make_quantizer("twin-uniform", FakeQuantizer(4, "weight", per_channel_axis=0, channels=3))
    assert math.isclose(log_powers(4, False), 15) and log_powers(4, True) == 7


def test_packed_file_keeps_the_types_and_onnx_refuses_them(tmp_path):
    from bench.export.onnx_qdq import export_onnx
    from bench.export.packed import load_packed, packed_info, save_packed

    fp = _toy_transformer()
    qmodel = quantize_model(fp, QuantConfig(4, 4, scope="ptq4sr"))
    for _, q in quantizers(qmodel):
        q.set_bounds(-1.0, 1.0)
    uniform_info = save_packed(qmodel, tmp_path / "uniform.safetensors")
    names = [name for name, q in quantizers(qmodel) if not q.is_weight][:2]
    log = make_quantizer("log-sqrt2", dict(quantizers(qmodel))[names[0]])
    log.set_scale(0.9)
    twin = make_quantizer("twin-uniform", dict(quantizers(qmodel))[names[1]])
    twin.set_twin(2.0, 5, signed=True)
    replace_quantizer(qmodel, names[0], log)
    replace_quantizer(qmodel, names[1], twin)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        expected = qmodel(x)
    info = save_packed(qmodel, tmp_path / "types.safetensors")
    assert info.act_bound_bytes == uniform_info.act_bound_bytes + 8  # the shift (int64) beside the bounds
    assert info.code_bytes == uniform_info.code_bytes  # b-bit weights either way
    loaded = load_packed(tmp_path / "types.safetensors", fp)
    got = dict(quantizers(loaded))
    assert got[names[0]].quant_type == "log-sqrt2" and got[names[1]].shift == 5
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert packed_info(tmp_path / "types.safetensors").fp_param_bytes == uniform_info.fp_param_bytes
    w8a8 = quantize_model(fp, QuantConfig(8, 8, scope="ptq4sr"))
    for _, q in quantizers(w8a8):
        q.set_bounds(-1.0, 1.0)
    log8 = make_quantizer("log-sqrt2", dict(quantizers(w8a8))[names[0]])
    log8.set_scale(0.9)
    replace_quantizer(w8a8, names[0], log8)
    with pytest.raises(ConfigError, match="log-sqrt2 quantizer, which ONNX"):
        export_onnx(w8a8, tmp_path / "q.onnx", sample_size=6)


def test_types_are_registered_by_the_core_alone():
    """A process that imports no method (e.g. `bench eval --quantized`) can still rebuild these types."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from bench.quant.io import load_quantized; from bench.quant.qtypes import list_quantizer_types; "
            "print(sorted(set(list_quantizer_types()) & {'log2', 'log-sqrt2', 'twin-uniform'})); "
            "print(any(m.startswith('methods') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split("\n")
    assert out[0] == "['log-sqrt2', 'log2', 'twin-uniform']" and out[1] == "False"
