"""Every registered method calibrates under mixed per-layer bits (QuantConfig.layer_bits): each quantizer keeps
its own bit-width, and a range rule's bounds are those it gives at that quantizer's bits in a uniform model."""
from __future__ import annotations

import pytest
import torch

import methods  # noqa: F401  (registers the built-in methods)
from bench.quant import CalibContext, quantize_with_method, quantized_layers, quantizers
from methods.registry import create_method, list_methods

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def swin():
    """A small SwinIR x2 (one RSTB of two blocks, 12 channels): every layer kind of SwinIR-light, and convs."""
    from models.swinir import SwinIR, SwinIRConfig
    torch.manual_seed(0)
    return SwinIR(2, SwinIRConfig(embed_dim=12, depths=(2,), num_heads=(2,))).eval()

SCOPE = "2dquant+convs"  # Swin blocks as 2dquant, convs as ptq4sr (8-bit first and last conv)
BLOCK = "layers.0.residual_group.blocks.0"
# Weight and activation bits far apart in both directions, on every kind of layer: split q/k/v, both BMMs
# (a MatMul takes the pair's a_bits on both operands), proj, fc1, fc2 (post-GELU input) and a body conv.
LAYER_BITS = {f"{BLOCK}.attn.qkv": (2, 8), f"{BLOCK}.attn.matmul_qk": (8, 2), f"{BLOCK}.attn.matmul_av": (2, 8),
              f"{BLOCK}.attn.proj": (8, 2), f"{BLOCK}.mlp.fc1": (2, 8), f"{BLOCK}.mlp.fc2": (8, 2),
              "layers.0.conv": (2, 8)}
RANGE_RULES = ("minmax", "percentile", "emmse", "dobi")
# The smallest settings that still run every stage of the fine-tuning methods.
FAST = {
    "2dquant": {"iters": 1, "batch": 1, "patch": 8, "K": 10},
    "condiquant": {"pgd_iters": 2, "iters": 1, "batch": 1, "patch": 8, "K": 10},
    "compsrt": {"iters": 1, "batch": 1, "patch": 8, "K": 10},
    "adaround": {"iters": 1, "batch": 1},
    "brecq": {"iters": 1, "batch": 1},
    "qdrop": {"iters": 1, "batch": 1},
    "ptq4sr": {"iters": 1, "batch": 1, "patch": 8},
    "ptq4vit": {"rounds": 1, "candidates": 5, "rows": 64, "slices": 4},
    "repq-vit": {"probe_patch": 8},
    "dobi": {"K": 10},
    "emmse": {},
}


def _expected_bits(name: str, is_weight: bool, fixed: dict[str, int]) -> int:
    layer = next(path for path in fixed if name.startswith(path + "."))
    w, a = LAYER_BITS.get(layer, (fixed[layer] or 4,) * 2)
    return w if is_weight else a


def _calibrate(model, method: str, batch, layer_bits=None, bits: int = 4):
    params = FAST.get(method, {})
    ctx = CalibContext(calib_batch=batch, progress=False)
    return quantize_with_method(model, create_method(method, **params), bits, bits, ctx, scope=SCOPE,
                                layer_bits=layer_bits)[0]


@pytest.mark.parametrize("method", list_methods())
def test_every_method_calibrates_each_quantizer_at_its_own_bits(swin, tiny_batch, method):
    qmodel = _calibrate(swin, method, tiny_batch, LAYER_BITS)
    assert qmodel.quant_config.bits_map() == LAYER_BITS
    fixed = {layer.path: layer.fixed_bits for layer in quantized_layers(swin, SCOPE)}
    assert sorted(b for b in fixed.values() if b) == [8, 8]  # conv_first and the upsampler's conv
    for name, q in quantizers(qmodel):
        assert q.bits == _expected_bits(name, q.is_weight, fixed), name
        assert q.calibrated and torch.isfinite(q.lower).all() and torch.isfinite(q.upper).all(), name
    with torch.no_grad():
        out = qmodel(tiny_batch)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("method", RANGE_RULES)
def test_range_rules_give_each_quantizer_the_bounds_of_its_own_bit_width(swin, tiny_batch, method):
    """Weights and FP activations do not depend on the other layers' bits, so a range rule that reads each
    quantizer's bits gives it the bounds of a uniform calibration at those bits."""
    mixed = dict(quantizers(_calibrate(swin, method, tiny_batch, LAYER_BITS)))
    uniform = {bits: dict(quantizers(_calibrate(swin, method, tiny_batch, bits=bits))) for bits in (2, 4, 8)}
    differs = 0
    for name, q in mixed.items():
        reference = uniform[q.bits][name]
        assert torch.equal(q.lower, reference.lower) and torch.equal(q.upper, reference.upper), name
        differs += q.bits != 4 and not torch.equal(q.upper, uniform[4][name].upper)
    assert differs > 0 or method in ("minmax", "percentile")  # their bounds do not depend on bits
