"""PTQ4ViT and RepQ-ViT on the shipped SwinIR-light x2 (small LR crops), and their refusal on CNNs."""
from __future__ import annotations

import pytest
import torch

from bench.cli import main
from bench.errors import ConfigError
from bench.quant import CalibContext, fake_quantize, quantize_with_method, quantizers
from bench.quant.io import load_quantized, save_quantized
from bench.quant.twin_uniform import codes_per_range
from methods import create_method
from models import create_model

BITS = 4


@pytest.fixture(scope="module")
def swinir():
    return create_model("swinir-light", 2)  # the shipped weights


@pytest.fixture(scope="module")
def crops():
    torch.manual_seed(0)
    return torch.rand(2, 3, 16, 16), torch.rand(1, 3, 24, 16)  # calibration crops, a held-out crop


@pytest.fixture(scope="module")
def repq(swinir, crops):
    method = create_method("repq-vit")
    qmodel, _ = quantize_with_method(swinir, method, BITS, BITS, CalibContext(calib_batch=crops[0], progress=False))
    return method, qmodel


@pytest.fixture(scope="module")
def ptq4vit(swinir, crops):
    method = create_method("ptq4vit", rounds=2, candidates=20, rows=512, slices=16, chunk=1)
    qmodel, _ = quantize_with_method(swinir, method, BITS, BITS, CalibContext(calib_batch=crops[0], progress=False))
    return method, qmodel


def _without_quantization(qmodel, x):
    enabled = {name: q.enabled for name, q in quantizers(qmodel)}
    for _, q in quantizers(qmodel):
        q.enabled = False
    try:
        with torch.no_grad():
            return qmodel(x)
    finally:
        for name, q in quantizers(qmodel):
            q.enabled = enabled[name]


def test_repq_reparameterisation_keeps_the_fp_output(swinir, repq, crops):
    method, qmodel = repq
    # every LayerNorm feeding q/k/v or fc1 was folded (2 per Swin block), and its affine really changed
    assert len(method.folded) == 48 and sum(len(v) for v in method.folded.values()) == 96
    norm = next(iter(method.folded))
    assert not torch.allclose(qmodel.get_submodule(norm).weight, swinir.get_submodule(norm).weight)
    with torch.no_grad():
        reference = swinir(crops[1])
    delta = float((_without_quantization(qmodel, crops[1]) - reference).abs().max())
    assert delta <= 1e-5, delta
    assert len(qmodel.quant_rewritten) == 48 * 2 + 96 * 2


def test_repq_per_tensor_input_equals_per_channel_quantization(swinir, repq, crops):
    """After the fold, the per-tensor quantizer on LN'(x) through W' gives what per-channel quantization of LN(x)
    through W gives (the reparameterisation is exact, not only in FP)."""
    method, qmodel = repq
    group = method.groups[0]
    norm_fp, norm_q = swinir.get_submodule(group.norm), qmodel.get_submodule(group.norm)
    x = torch.randn(300, norm_fp.normalized_shape[0])
    linear = qmodel.get_submodule(group.linears[0])
    lower, upper = group.lower.float(), group.upper.float()
    with torch.no_grad():
        per_channel = fake_quantize(norm_fp(x), lower, upper, BITS)
        # the first linear of the first group is q, rows 0..C-1 of the FP model's fused qkv
        assert group.linears[0].endswith(".q")
        fused = swinir.get_submodule(group.linears[0].removesuffix(".q"))
        rows = slice(0, linear.out_features)
        expected = torch.nn.functional.linear(per_channel, fused.weight[rows], fused.bias[rows])
        got = torch.nn.functional.linear(linear.input_quant(norm_q(x)), linear.weight, linear.bias)
    assert float(lower.min()) < float(lower.max())  # channels really had different ranges
    assert torch.allclose(got, expected, atol=1e-3 * float(expected.abs().max()))


def test_repq_attention_maps_use_log_sqrt2_and_the_file_round_trips(swinir, repq, crops, tmp_path):
    _, qmodel = repq
    types = {q.kind: set() for _, q in quantizers(qmodel)}
    for _, q in quantizers(qmodel):
        types[q.kind].add(q.quant_type)
    assert types["act_softmax"] == {"log-sqrt2"} and types["act"] == {"uniform"} and types["weight"] == {"uniform"}
    with torch.no_grad():
        expected = qmodel(crops[1])
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "repq.pt"), swinir)
    with torch.no_grad():
        assert torch.equal(loaded(crops[1]), expected)
        assert float((expected - swinir(crops[1])).abs().max()) < 0.05  # quantized, but close at W4A4 here


def test_ptq4vit_twin_uniform_on_softmax_and_gelu(ptq4vit, crops):
    _, qmodel = ptq4vit
    twins = [(n, q) for n, q in quantizers(qmodel) if q.quant_type == "twin-uniform"]
    assert sorted({q.kind for _, q in twins}) == ["act_gelu", "act_softmax"] and len(twins) == 48
    for _, q in twins:
        d1, d2 = q.steps()
        assert d2 / d1 == 2.0 ** q.shift
        if q.kind == "act_softmax":
            assert float(q.lower.detach()) == 0.0 and float(q.upper.detach()) == pytest.approx(1.0)
        else:
            assert float(q.lower.detach()) == pytest.approx(-codes_per_range(BITS) * d1)
    for _, q in quantizers(qmodel):
        if q.quant_type == "uniform":  # symmetric grids: l = -2^(b-1) D, u = (2^(b-1) - 1) D
            lower, upper = q.lower.detach().double(), q.upper.detach().double()
            step = (upper - lower) / (2 ** BITS - 1)
            assert torch.allclose(-lower / 2 ** (BITS - 1), step, rtol=1e-6)


def test_ptq4vit_output_close_to_fp(swinir, ptq4vit, crops):
    _, qmodel = ptq4vit
    with torch.no_grad():
        reference = swinir(crops[1])
        err = float((qmodel(crops[1]) - reference).square().mean())
    assert 0 < err < 1e-4, err  # quantized (not the FP model) and close to it: the shipped weights barely move at W4A4


def _symmetric(w: torch.Tensor, step: float) -> torch.Tensor:
    return torch.clamp(torch.round(w / step), -2 ** (BITS - 1), 2 ** (BITS - 1) - 1) * step


def test_hessian_guided_search_weights_the_output_error_by_the_squared_gradient():
    """A linear whose output 0 reads an outlier weight: with the gradient on output 0 only, the search keeps the
    outlier (large step); with a flat gradient it clips it. Both choices equal an independent float64 argmin."""
    import numpy as np

    from bench.quant.layers import QuantLinear
    from methods.ptq4vit import LayerData, LayerSearch

    torch.manual_seed(4)
    linear = torch.nn.Linear(8, 128).requires_grad_(False)
    with torch.no_grad():
        linear.weight.normal_(0, 0.1)
        linear.weight[0, 0] = 1.0
    x = torch.randn(256, 8)
    out = linear(x).detach()
    alphas = 0.01 + np.arange(41) * (1.2 - 0.01) / 40
    chosen = {}
    for label, grad in (("output 0", torch.zeros(256, 128).index_fill_(1, torch.tensor([0]), 1.0)),
                        ("flat", torch.ones(256, 128))):
        module = QuantLinear(linear, BITS, BITS)
        data = LayerData("fc", module, [[x]], [out], [grad], [float(x.min())], [float(x.max())])
        search = LayerSearch(data, alphas)
        x_step = search.ops[1].step
        base = 1.0 / (2 ** (BITS - 1) - 0.5)
        search.search(1)  # the weight first, with x at its initial step
        xq = _symmetric(x.double(), x_step)
        scores = [float((grad.double() ** 2 * (xq @ _symmetric(linear.weight.detach().double(), base * a).T
                                               + linear.bias.detach().double() - out.double()) ** 2).sum())
                  for a in alphas]
        assert search.ops[0].step == pytest.approx(base * alphas[int(np.argmin(scores))], rel=1e-9), label
        chosen[label] = search.ops[0].step
    assert chosen["output 0"] > 2 * chosen["flat"], chosen  # the gradient weighting changes the choice


@pytest.mark.parametrize("name,operator", [("repq-vit", "LayerNorm inputs to quantized linears"),
                                           ("ptq4vit", "post-softmax or post-GELU activations")])
def test_cnns_are_refused_naming_the_missing_operator(name, operator):
    cnn = create_model("imdn", 2, weights="random")
    batch = torch.rand(1, 3, 8, 8)
    with pytest.raises(ConfigError, match=f"{name} needs {operator}.*imdn has none"):
        quantize_with_method(cnn, create_method(name), BITS, BITS, CalibContext(calib_batch=batch, progress=False))


def test_methods_list_shows_them(capsys):
    assert main(["methods", "list"]) == 0
    out = capsys.readouterr().out
    assert "ptq4vit" in out and "repq-vit" in out and "attn_quantizer" in out and "alpha_max" in out
