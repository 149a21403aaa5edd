"""Quantized wrappers: fake-quantized inputs and weights, FP bias, FP outputs/accumulators (spec §2.1).

Each wrapper subclasses the layer it replaces, so `isinstance(m, nn.Linear)` and state-dict names
(`weight`, `bias`) stay the same; it shares (not copies) the parameters of the layer it was built from.
Quantizer children: `weight_quant` + `input_quant` (Linear, Conv2d), `a_quant` + `b_quant` (MatMul).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.quant.quantizer import ACT, WEIGHT, FakeQuantizer
from models.layers import MatMul


def _weight_quantizer(weight: torch.Tensor, bits: int, per_channel: bool) -> FakeQuantizer:
    if per_channel:  # one (l, u) per output channel: axis 0 for both Linear and Conv2d weights
        return FakeQuantizer(bits, WEIGHT, per_channel_axis=0, channels=weight.shape[0])
    return FakeQuantizer(bits, WEIGHT)


class _WeightTransformHook:
    """The weight path of QuantLinear/QuantConv2d: Q(W), or T^-1(Q(T(W))) when a method set a weight transform
    (`bench.quant.transforms`; None, the default, leaves the layer exactly as without the hook)."""

    weight_transform = None

    def quantizer_weight(self) -> torch.Tensor:
        """The tensor the weight quantizer quantizes: W, or T(W)."""
        t = self.weight_transform
        return self.weight if t is None else t.forward(self.weight)

    def quantized_weight(self) -> torch.Tensor:
        t = self.weight_transform
        if t is None:
            return self.weight_quant(self.weight)
        return t.inverse(self.weight_quant(t.forward(self.weight)), self.weight.shape)


class QuantLinear(_WeightTransformHook, nn.Linear):
    """nn.Linear with a weight quantizer and an input-activation quantizer."""

    def __init__(self, linear: nn.Linear, w_bits: int, a_bits: int, *, per_channel: bool = False,
                 act_kind: str = ACT) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = linear.weight
        self.bias = linear.bias
        self.weight_quant = _weight_quantizer(self.weight, w_bits, per_channel)
        self.input_quant = FakeQuantizer(a_bits, act_kind)

    @classmethod
    def from_rows(cls, linear: nn.Linear, rows: slice, w_bits: int, a_bits: int, *, per_channel: bool = False,
                  act_kind: str = ACT) -> "QuantLinear":
        """A QuantLinear computing output features `rows` of `linear` (used to split a fused qkv)."""
        part = nn.Linear(linear.in_features, rows.stop - rows.start, bias=linear.bias is not None, device="meta")
        part.weight = nn.Parameter(linear.weight.detach()[rows].clone(), requires_grad=False)
        if linear.bias is not None:
            part.bias = nn.Parameter(linear.bias.detach()[rows].clone(), requires_grad=False)
        return cls(part, w_bits, a_bits, per_channel=per_channel, act_kind=act_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.input_quant(x), self.quantized_weight(), self.bias)


class QuantConv2d(_WeightTransformHook, nn.Conv2d):
    """nn.Conv2d with a weight quantizer (per-tensor or per-output-channel) and an input quantizer."""

    def __init__(self, conv: nn.Conv2d, w_bits: int, a_bits: int, *, per_channel: bool = False,
                 act_kind: str = ACT) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                         padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                         bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        self.weight_quant = _weight_quantizer(self.weight, w_bits, per_channel)
        self.input_quant = FakeQuantizer(a_bits, act_kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)


class QuantMatMul(MatMul):
    """`a @ b` with one activation quantizer per operand (both are activations)."""

    def __init__(self, a_bits: int, *, a_kind: str = ACT, b_kind: str = ACT) -> None:
        super().__init__()
        self.a_quant = FakeQuantizer(a_bits, a_kind)
        self.b_quant = FakeQuantizer(a_bits, b_kind)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_quant(a) @ self.b_quant(b)


class SplitQuantLinear(nn.Module):
    """A fused Linear split along its outputs into named QuantLinears (2DQuant's q/k/v, spec D11).

    Each part has its own weight quantizer and its own input quantizer on the same input; the outputs are
    concatenated back in order, so the module is a drop-in replacement for the fused layer.
    """

    def __init__(self, linear: nn.Linear, names: tuple[str, ...], w_bits: int, a_bits: int, *,
                 per_channel: bool = False, act_kind: str = ACT) -> None:
        super().__init__()
        if linear.out_features % len(names):
            raise ValueError(f"cannot split {linear.out_features} outputs into {len(names)} equal parts")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.part_names = tuple(names)
        width = linear.out_features // len(names)
        for i, name in enumerate(names):
            self.add_module(name, QuantLinear.from_rows(linear, slice(i * width, (i + 1) * width), w_bits, a_bits,
                                                        per_channel=per_channel, act_kind=act_kind))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [getattr(self, name) for name in self.part_names]
        if not torch.is_grad_enabled() and _one_input_quantization(parts):
            # Inference with identical input quantizers (range rules give q, k and v the same bounds, as they
            # see the same tensor): the parts' inputs are the same tensor, so quantize it once and run the fused
            # layer's single GEMM on the parts' quantized weights. Three GEMMs and a concatenation cost ~10 % of
            # a SwinIR-light forward more (results/reference/speed.md, item 8); the values are the same.
            weight = torch.cat([part.quantized_weight() for part in parts])
            bias = None if parts[0].bias is None else torch.cat([part.bias for part in parts])
            return nn.functional.linear(parts[0].input_quant(x), weight, bias)
        return torch.cat([part(x) for part in parts], dim=-1)


def _one_input_quantization(parts: list[nn.Module]) -> bool:
    """True when every part is a plain QuantLinear whose plain input quantizer has the same settings and bounds
    as the others', and none observes (a calibration capture must see each quantizer's call)."""
    first = parts[0].input_quant
    for part in parts:
        q = part.input_quant
        if type(part) is not QuantLinear or type(q) is not FakeQuantizer or q.observer is not None:
            return False
        if (part.bias is None) != (parts[0].bias is None):
            return False
        if q is not first and (q.enabled != first.enabled or q.calibrated != first.calibrated or q.bits != first.bits
                               or q.per_channel_axis is not None or q.grad_scale != first.grad_scale
                               or not torch.equal(q.lower, first.lower) or not torch.equal(q.upper, first.upper)):
            return False
    return first.per_channel_axis is None


QUANT_LAYER_TYPES = (QuantLinear, QuantConv2d, QuantMatMul, SplitQuantLinear)
TRANSFORMABLE_LAYER_TYPES = (QuantLinear, QuantConv2d)  # layers with a weight_transform slot
