"""Quantization core: fake quantizers, quantized layers, scopes, model surgery, calibration capture, I/O.

Knows no PTQ method and no architecture by name (methods live in `methods/`, models in `models/`).
"""
from bench.quant.calibrate import capture_activations, capture_weights
from bench.quant.io import load_quantized, read_quantized, save_quantized
from bench.quant.layers import QuantConv2d, QuantLinear, QuantMatMul, SplitQuantLinear
from bench.quant.noisy import NoisyFakeQuantizer  # registers the "noisy" type (NoisyQuant's offset)
from bench.quant.pipeline import CalibContext, quantize_with_method
from bench.quant.qtypes import list_quantizer_types, make_quantizer, register_quantizer_type, replace_quantizer
from bench.quant.quantizer import (
                                   ACT,
                                   ACT_GELU,
                                   ACT_SOFTMAX,
                                   KINDS,
                                   WEIGHT,
                                   FakeQuantizer,
                                   fake_quantize,
                                   fake_quantize_reference,
                                   fake_quantize_values,
                                   lsq_grad_scale,
)
from bench.quant.rounding import LearnedRoundingQuantizer  # registers the "learned-rounding" type
from bench.quant.scopes import AUTO, LayerRule, Scope, get_scope, list_scopes, register_scope, resolve_scope
from bench.quant.surgery import (
                                   QuantConfig,
                                   QuantizedLayer,
                                   activation_quantizers,
                                   bound_parameters,
                                   quantize_model,
                                   quantized_layers,
                                   quantizers,
                                   rewrite_fp_tensor,
                                   set_quant_enabled,
                                   uncalibrated,
                                   weight_quantizers,
)

__all__ = [
    "ACT", "ACT_GELU", "ACT_SOFTMAX", "AUTO", "KINDS", "WEIGHT",
    "FakeQuantizer", "fake_quantize", "fake_quantize_reference", "fake_quantize_values", "lsq_grad_scale",
    "QuantLinear", "QuantConv2d", "QuantMatMul", "SplitQuantLinear",
    "LayerRule", "Scope", "register_scope", "get_scope", "list_scopes", "resolve_scope",
    "QuantConfig", "QuantizedLayer", "quantized_layers", "quantize_model", "quantizers", "activation_quantizers",
    "weight_quantizers",
    "bound_parameters", "set_quant_enabled", "uncalibrated", "rewrite_fp_tensor",
    "register_quantizer_type", "make_quantizer", "replace_quantizer", "list_quantizer_types", "LearnedRoundingQuantizer",
    "NoisyFakeQuantizer",
    "capture_activations", "capture_weights",
    "save_quantized", "load_quantized", "read_quantized",
    "CalibContext", "quantize_with_method",
]
