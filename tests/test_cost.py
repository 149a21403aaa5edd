"""Cost model (spec §6): exact parameter/MAC counts, the paper's compression and speed-up numbers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.cost import (
    EXCLUDED_PARAMETER_PATTERNS,
    analyze,
    compression_ratio,
    count_layer_macs,
    count_parameters,
    model_cost,
)
from bench.quant import ACT, WEIGHT, FakeQuantizer
from models.layers import MatMul


@pytest.fixture(scope="module")
def swinir_x4():
    return model_cost("swinir-light", 4, [(4, 4), (3, 3), (2, 2)], (128, 128))


def test_swinir_light_x4_parameters(swinir_x4):
    fp, reports = swinir_x4
    assert EXCLUDED_PARAMETER_PATTERNS == ("relative_position_bias_table",)
    assert (fp.params, fp.params_excluded) == (897_228, 32_400)
    assert [r.quantized_weights for r in reports] == [691_200] * 3
    assert [r.quantizer_scalars for r in reports] == [768] * 3


def test_swinir_light_x4_paper_macs(swinir_x4):
    fp, _ = swinir_x4
    paper = fp.paper_fp
    # SwinIR's analytic flops() at LR 128x128, as in the 2DQuant paper's Table 2 (16.74 G).
    assert fp.paper_rule == "paper:swinir"
    assert (paper.linear_bmm, paper.conv, paper.other) == (14_344_519_680, 2_326_855_680, 74_711_040)
    assert paper.total == 16_746_086_400
    # The true count: conv_after_body at 9*C^2, the x4 upsampler conv in full, all 50 LayerNorms.
    counted = fp.counted_fp
    assert (counted.linear_bmm, counted.conv, counted.other) == (14_344_519_680, 3_105_423_360, 49_152_000)
    assert round(counted.total / 1e9, 2) == 17.50


def test_swinir_light_x4_compression_and_speedup(swinir_x4):
    _, reports = swinir_x4
    assert [f"{r.compression:.2f}" for r in reports] == ["3.07", "3.31", "3.60"]
    assert [f"{r.speedup():.2f}" for r in reports] == ["3.99", "4.47", "5.08"]
    assert [round(r.ops() / 1e9, 3) for r in reports] == [4.195, 3.746, 3.298]
    assert f"{reports[0].bops_speedup():.2f}" == "6.38"  # spec §6.3: "about 6.4x" under BOPs
    # Packed 4-bit weights + FP32 rest + 2 floats per quantizer.
    assert reports[0].size_bytes == 691_200 // 2 + 4 * (897_228 - 691_200) + 4 * 768


def test_swinir_light_x2_compression():
    _, reports = model_cost("swinir-light", 2, [(4, 4), (3, 3), (2, 2)], (16, 16))
    assert reports[0].params == 877_752
    assert [f"{r.compression:.3f}" for r in reports] == ["3.216", "3.492", "3.820"]
    assert f"{compression_ratio(897_228, 691_200, 2):.3f}" == "3.600"


def test_cost_cli_prints_paper_numbers(capsys):
    assert main(["cost", "--model", "swinir-light", "--scale", "4", "--bits", "4", "3", "2", "--lr-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "897,228 parameters (excluding rel-pos tables)" in out
    assert "compression 3.07/3.31/3.60 and speed-up 3.99/4.47/5.08 at 4/3/2 bits" in out
    assert "16.7461 G = Linear+BMM 14.3445 G + conv 2.3269 G + other 0.0747 G" in out


class _Toy(nn.Module):
    """conv 3->4 (3x3), linear 4->6 on tokens, a token matmul, and a table excluded from P."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 6)
        self.mm = MatMul()
        self.relative_position_bias_table = nn.Parameter(torch.zeros(7))

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)   # (1, h*w, 4)
        y = self.fc(tokens)                                # (1, h*w, 6)
        return self.mm(y.transpose(1, 2), y)               # (1, 6, 6)


def test_generic_counts_on_a_toy_model():
    toy = _Toy()
    assert count_parameters(toy) == (3 * 4 * 9 + 4 + 4 * 6 + 6, 7)
    layers = {layer.name: layer for layer in count_layer_macs(toy, (8, 8))}
    assert layers["conv"].macs == 64 * 4 * 27
    assert layers["fc"].macs == 64 * 6 * 4
    assert layers["mm"].macs == 36 * 64

    # Quantize the linear (W4, A8) and the matmul (A4 x A4); the conv stays FP.
    qtoy = _Toy()
    qtoy.load_state_dict(toy.state_dict())
    qtoy.fc.weight_quantizer = _quantizer(4, weight=True)
    qtoy.fc.input_quantizer = _quantizer(8, weight=False)
    qtoy.mm.a_quantizer = _quantizer(4, weight=False)
    qtoy.mm.b_quantizer = _quantizer(4, weight=False)
    report = analyze(toy, "toy", 1, qtoy, (8, 8))
    assert report.paper_rule == "counted"
    assert report.quantized_weights == 24
    assert report.compression == pytest.approx(report.params / (report.params - 24 + 24 * 4 / 32))
    conv, fc, mm = 64 * 4 * 27, 64 * 6 * 4, 36 * 64
    assert report.ops() == pytest.approx(conv + fc * 8 / 32 + mm * 4 / 32)
    assert report.bops() == pytest.approx(conv + fc * 32 / 1024 + mm * 16 / 1024)
    assert report.size_bytes == 24 // 2 + 4 * (report.params - 24) + 4 * 2 * 4


def _quantizer(bits: int, weight: bool) -> FakeQuantizer:
    return FakeQuantizer(bits, WEIGHT if weight else ACT)
