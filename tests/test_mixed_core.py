"""Mixed precision in the core: QuantConfig.layer_bits applied at surgery, priced by the cost model and
measured to the byte by the packed file."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch

from bench.cost import analyze, count_layer_macs
from bench.errors import ConfigError
from bench.export.packed import load_packed, save_packed
from bench.quant import (
    QuantConfig,
    load_quantized,
    quantize_model,
    quantized_layers,
    quantizers,
    save_quantized,
    weight_quantizers,
)
from models import create_model

# Three IMDN body convs at three different pairs; everything else W4A4, the edge convs 8-bit (ptq4sr).
MIXED = {"IMDB1.c1": (2, 6), "IMDB2.c3": (8, 3), "LR_conv": (6, 2)}


@pytest.fixture(scope="module")
def imdn():
    torch.manual_seed(0)
    return create_model("imdn", 2, weights="random")


def _bounded(qmodel):
    for _, q in quantizers(qmodel):
        q.set_bounds(-0.1, 0.1)
    return qmodel


def test_layer_bits_take_a_mapping_or_json_triples_and_store_sorted_triples():
    config = QuantConfig(4, 4, "ptq4sr", layer_bits={"b": (2, 3), "a": [8, 6]})
    assert config.layer_bits == (("a", 8, 6), ("b", 2, 3))
    assert config.bits_map() == {"a": (8, 6), "b": (2, 3)}
    assert config.tag == "w4a4+mixed" and QuantConfig(4, 4).tag == "w4a4"
    again = QuantConfig(**json.loads(json.dumps(asdict(config))))  # the packed file's JSON round trip
    assert again == config and hash(again) == hash(config)
    with pytest.raises(ConfigError, match="layer_bits entry 'a'"):
        QuantConfig(layer_bits={"a": (4, 9)})


def test_surgery_gives_each_named_layer_its_bits_and_the_rest_the_uniform_ones(imdn):
    qmodel = quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits=MIXED))
    fixed = {layer.path: layer.fixed_bits for layer in quantized_layers(imdn, "ptq4sr")}
    assert fixed["fea_conv"] == 8 and fixed["upsampler.0"] == 8 and fixed["IMDB1.c1"] is None
    for name, q in quantizers(qmodel):
        layer = name.rsplit(".", 1)[0]
        default = (fixed[layer],) * 2 if fixed[layer] else (4, 4)
        w, a = MIXED.get(layer, default)
        assert q.bits == (w if q.is_weight else a), name
    uniform = quantize_model(imdn, QuantConfig(4, 4, "ptq4sr"))
    empty = quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits={}))
    assert [(n, q.bits) for n, q in quantizers(empty)] == [(n, q.bits) for n, q in quantizers(uniform)]
    with pytest.raises(ConfigError, match="'IMDB1.nope'.*quantized_layers"):
        quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits={"IMDB1.nope": (4, 4)}))


def test_cost_model_prices_each_layer_at_its_own_bits(imdn):
    """Size = sum of ceil(numel * w / 8) over the quantized weights + FP32 for the rest + 2 floats per bound
    scalar; counted BOPs = sum of MACs * w * a / 32^2 (IMDN under ptq4sr quantizes every conv)."""
    layers = count_layer_macs(imdn)
    qmodel = quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits=MIXED))
    report = analyze(imdn, "imdn", 2, qmodel, layers=layers)
    bits = {layer.path: MIXED.get(layer.path, (layer.fixed_bits,) * 2 if layer.fixed_bits else (4, 4))
            for layer in quantized_layers(imdn, "ptq4sr")}
    numel = {n.removesuffix(".weight_quant"): w.numel() for n, _, w in weight_quantizers(qmodel)}
    params = sum(p.numel() for p in imdn.parameters())
    scalars = sum(q.lower.numel() + q.upper.numel() for _, q in quantizers(qmodel))
    size = (sum(math.ceil(numel[p] * w / 8) for p, (w, _) in bits.items())
            + 4 * (params - sum(numel.values())) + 4 * scalars)
    assert report.size_bytes == size
    macs = {layer.name: layer.macs for layer in layers}
    bops = sum(macs[p] * w * a / 32 ** 2 for p, (w, a) in bits.items())
    assert report.bops("counted") == pytest.approx(bops, rel=1e-12)
    uniform = analyze(imdn, "imdn", 2, quantize_model(imdn, QuantConfig(4, 4, "ptq4sr")), layers=layers)
    # 64x64x3x3 at -2 bits, 64x48x3x3 at +4, 64x64x3x3 at +2: 110,592 bits more than uniform W4A4
    assert report.size_bytes - uniform.size_bytes == 110_592 // 8


def test_packed_file_measures_the_cost_models_size_to_the_byte_and_round_trips(imdn, tmp_path):
    qmodel = _bounded(quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits=MIXED))).eval()
    info = save_packed(qmodel, tmp_path / "mixed.safetensors")
    report = analyze(imdn, "imdn", 2, qmodel)
    assert info.file_bytes - info.header_bytes == report.size_bytes
    loaded = load_packed(tmp_path / "mixed.safetensors", imdn).eval()
    assert loaded.quant_config == qmodel.quant_config
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))


def test_saved_quantization_keeps_the_layer_bits(imdn, tmp_path):
    qmodel = _bounded(quantize_model(imdn, QuantConfig(4, 4, "ptq4sr", layer_bits=MIXED)))
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "q.pt"), imdn)
    assert loaded.quant_config.layer_bits == qmodel.quant_config.layer_bits
    assert [(n, q.bits) for n, q in quantizers(loaded)] == [(n, q.bits) for n, q in quantizers(qmodel)]
