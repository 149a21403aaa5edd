"""Scopes and model surgery: exact quantizer counts on SwinIR-light (2dquant) and IMDN (ptq4sr, fp-edges), the FP model
left untouched, save/load round trip."""
from __future__ import annotations

import fnmatch

import pytest
import torch
import torch.nn as nn

from bench.errors import CheckpointError, ConfigError
from bench.quant import (
    CalibContext,
    QuantConfig,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    bound_parameters,
    load_quantized,
    quantize_model,
    quantize_with_method,
    quantizers,
    resolve_scope,
    save_quantized,
    set_quant_enabled,
    weight_quantizers,
)
from methods.registry import create_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imdn():
    from models import create_model
    torch.manual_seed(0)
    return create_model("imdn", 2, weights="random")


# --------------------------------------------------------------------------------------------- 2dquant

def test_2dquant_scope_on_swinir_light_counts(swinir_random):
    qmodel = quantize_model(swinir_random, QuantConfig(4, 4))
    assert qmodel.quant_scope == "2dquant"  # auto
    qs = quantizers(qmodel)
    assert len(qs) == 384  # 24 blocks x 16
    assert sum(p.numel() for p in bound_parameters(qmodel)) == 768
    weights = weight_quantizers(qmodel)
    assert len(weights) == 96 + 48  # 24 x (q, k, v, proj, fc1, fc2)
    assert sum(w.numel() for _, _, w in weights) == 691_200
    kinds = [q.kind for _, q in qs]
    assert kinds.count("weight") == 144 and kinds.count("act_softmax") == 24 and kinds.count("act_gelu") == 24
    assert kinds.count("act") == 384 - 144 - 48
    # per block: q/k/v split (3 weight + 3 input quantizers), proj, fc1, fc2, two BMMs
    block = "layers.0.residual_group.blocks.0."
    names = [n[len(block):] for n, _ in qs if n.startswith(block)]
    assert names == ["attn.qkv.q.weight_quant", "attn.qkv.q.input_quant", "attn.qkv.k.weight_quant",
                     "attn.qkv.k.input_quant", "attn.qkv.v.weight_quant", "attn.qkv.v.input_quant",
                     "attn.matmul_qk.a_quant", "attn.matmul_qk.b_quant", "attn.matmul_av.a_quant",
                     "attn.matmul_av.b_quant", "attn.proj.weight_quant", "attn.proj.input_quant",
                     "mlp.fc1.weight_quant", "mlp.fc1.input_quant", "mlp.fc2.weight_quant", "mlp.fc2.input_quant"]
    # every conv stays FP; only the scope's layers are wrapped
    assert not any(isinstance(m, QuantConv2d) for m in qmodel.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in qmodel.modules()) == sum(
        isinstance(m, nn.Conv2d) for m in swinir_random.modules())
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == 144
    assert sum(isinstance(m, QuantMatMul) for m in qmodel.modules()) == 48
    # only the bounds are trainable
    assert [p for p in qmodel.parameters() if p.requires_grad] == bound_parameters(qmodel)


def test_quantize_model_leaves_the_fp_model_untouched(swinir_random, tiny_batch):
    state = {k: v.clone() for k, v in swinir_random.state_dict().items()}
    flags = {k: p.requires_grad for k, p in swinir_random.named_parameters()}
    with torch.no_grad():
        before = swinir_random(tiny_batch)
    qmodel, _ = quantize_with_method(swinir_random, create_method("minmax"), 2, 2, CalibContext(calib_batch=tiny_batch))
    with torch.no_grad():
        after = swinir_random(tiny_batch)
        quantized = qmodel(tiny_batch)
    assert torch.equal(before, after)
    assert set(swinir_random.state_dict()) == set(state)
    assert all(torch.equal(v, state[k]) for k, v in swinir_random.state_dict().items())
    assert flags == {k: p.requires_grad for k, p in swinir_random.named_parameters()}
    assert not any(isinstance(m, (QuantLinear, QuantMatMul)) for m in swinir_random.modules())
    assert not torch.equal(quantized, before)
    # quantizers disabled: the copy computes the FP function (q/k/v split included)
    set_quant_enabled(qmodel, False)
    with torch.no_grad():
        torch.testing.assert_close(qmodel(tiny_batch), before, atol=1e-5, rtol=0)


def test_save_load_round_trip_gives_identical_outputs(swinir_random, tiny_batch, tmp_path):
    qmodel, _ = quantize_with_method(swinir_random, create_method("dobi"), 3, 3, CalibContext(calib_batch=tiny_batch))
    path = save_quantized(qmodel, tmp_path / "dobi.pt", {"model": "swinir-light", "scale": 2,
                                                          "method": qmodel.quant_method})
    assert path.stat().st_size < 100_000  # bounds and metadata only, not the FP weights (~3.6 MB)
    loaded = load_quantized(path, swinir_random)
    assert loaded.quant_meta["method"] == {"name": "dobi", "params": {"variant": "paper", "K": 100, "search": "stream"}}
    assert loaded.quant_config == QuantConfig(3, 3, "2dquant")
    with torch.no_grad():
        assert torch.equal(loaded(tiny_batch), qmodel(tiny_batch))


def test_loading_bounds_into_another_model_is_a_checkpoint_error(swinir_random, imdn, tmp_path):
    qmodel = quantize_model(imdn, QuantConfig(8, 8))
    for _, q in quantizers(qmodel):
        q.set_bounds(-1.0, 1.0)
    path = save_quantized(qmodel, tmp_path / "imdn.pt", {})
    with pytest.raises(CheckpointError, match="imdn.pt"):
        load_quantized(path, swinir_random)
    bogus = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1)}, bogus)
    with pytest.raises(CheckpointError, match="weights.pth"):
        load_quantized(bogus, swinir_random)


# ---------------------------------------------------------------------------------------------- ptq4sr

def test_ptq4sr_scope_on_imdn_quantizes_every_conv_with_8_bit_edges(imdn):
    convs = [name for name, m in imdn.named_modules() if isinstance(m, nn.Conv2d)]
    qmodel = quantize_model(imdn, QuantConfig(4, 4))
    assert qmodel.quant_scope == "ptq4sr"  # auto: the registry default of imdn
    quant_convs = [name for name, m in qmodel.named_modules() if isinstance(m, QuantConv2d)]
    assert quant_convs == convs and len(quant_convs) == 46
    assert len(quantizers(qmodel)) == 92
    bits = {name: (m.weight_quant.bits, m.input_quant.bits) for name, m in qmodel.named_modules()
            if isinstance(m, QuantConv2d)}
    assert bits[convs[0]] == (8, 8) and bits[convs[-1]] == (8, 8)
    assert all(b == (4, 4) for name, b in bits.items() if name not in (convs[0], convs[-1]))
    # per-output-channel conv weights: one (l, u) pair per output channel
    conv = qmodel.get_submodule(convs[1])
    assert conv.weight_quant.lower.shape == (conv.out_channels,)


def test_ptq4sr_scope_on_swinir_wraps_convs_and_linears_but_no_bmm(swinir_random):
    qmodel = quantize_model(swinir_random, QuantConfig(4, 4, scope="ptq4sr"))
    n_convs = sum(isinstance(m, nn.Conv2d) for m in swinir_random.modules())
    assert sum(isinstance(m, QuantConv2d) for m in qmodel.modules()) == n_convs
    assert sum(isinstance(m, QuantLinear) for m in qmodel.modules()) == 96  # fused qkv not split
    assert not any(isinstance(m, QuantMatMul) for m in qmodel.modules())
    assert qmodel.get_submodule("conv_first").weight_quant.bits == 8


def test_fp_edges_scope_on_imdn_leaves_first_and_last_conv_fp(imdn, tmp_path):
    convs = [name for name, m in imdn.named_modules() if isinstance(m, nn.Conv2d)]
    qmodel = quantize_model(imdn, QuantConfig(4, 4, scope="fp-edges"))
    first, last = qmodel.get_submodule(convs[0]), qmodel.get_submodule(convs[-1])
    assert type(first) is nn.Conv2d and type(last) is nn.Conv2d  # not wrapped at all
    quant_convs = [name for name, m in qmodel.named_modules() if isinstance(m, QuantConv2d)]
    assert quant_convs == convs[1:-1] and len(quant_convs) == 44
    assert len(quantizers(qmodel)) == 88
    assert {q.bits for _, q in quantizers(qmodel)} == {4}
    assert sum(m.weight.numel() for m in qmodel.modules() if isinstance(m, QuantConv2d)) == 683_520
    # the scope is saved with the bounds and restored by name
    calibrated, _ = quantize_with_method(imdn, create_method("minmax"), 4, 4,
                                         CalibContext(calib_batch=torch.rand(2, 3, 16, 16)), scope="fp-edges")
    loaded = load_quantized(save_quantized(calibrated, tmp_path / "q.pt", {}), imdn)
    assert loaded.quant_scope == "fp-edges" and len(quantizers(loaded)) == 88


def test_a_scope_with_an_impossible_edge_rule_is_refused():
    from bench.quant.scopes import Scope, register_scope
    with pytest.raises(ValueError, match="edge_convs must be None, 'fp' or a bit-width, got 1"):
        register_scope(Scope("bad-edges", "", (), edge_convs=1))


def test_cli_scope_help_names_every_registered_scope():
    from bench.cli.options import SCOPE_NAMES
    from bench.quant.scopes import list_scopes
    assert sorted(SCOPE_NAMES) == list_scopes()


# ------------------------------------------------------------------------------------------- scope rules

class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def test_auto_scope_and_unmatched_scope():
    assert resolve_scope(Plain()).name == "ptq4sr"  # no MatMul, unknown model
    with pytest.raises(ConfigError, match="matches no layer"):
        quantize_model(Plain(), QuantConfig(4, 4, scope="2dquant"))
    with pytest.raises(ConfigError, match="unknown quantization scope 'int8'"):
        quantize_model(Plain(), QuantConfig(4, 4, scope="int8"))
    qmodel = quantize_model(Plain(), QuantConfig(4, 4))
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_model(qmodel, QuantConfig(4, 4))


def test_2dquant_patterns_name_only_swin_attention_and_mlp(swinir_random):
    from bench.quant.scopes import get_scope
    patterns = [r.pattern for r in get_scope("2dquant").rules]
    matched = [name for name, _ in swinir_random.named_modules() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    assert len(matched) == 24 * 6
