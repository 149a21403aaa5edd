"""Model surgery: `quantize_model` returns a quantized *copy* of a model (torchao `quantize_` style,
but the original is never touched), plus accessors for the inserted quantizers.

In the copy every parameter is frozen except the quantizer bounds: PTQ never updates weights, so
`[p for p in qmodel.parameters() if p.requires_grad]` is exactly the learnable bounds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear, QuantMatMul, SplitQuantLinear
from bench.quant.quantizer import MAX_BITS, MIN_BITS, FakeQuantizer
from bench.quant.scopes import AUTO, FP, LayerRule, Scope, resolve_scope


@dataclass(frozen=True)
class QuantConfig:
    """Bit-widths and placement of a quantization. `per_channel_weights=True` makes every weight
    quantizer per-output-channel (scopes may also ask for it per rule, e.g. ptq4sr's convs)."""
    w_bits: int = 4
    a_bits: int = 4
    scope: str = AUTO
    per_channel_weights: bool = False

    def __post_init__(self) -> None:
        for field_name in ("w_bits", "a_bits"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
                raise ConfigError(f"{field_name}={value!r} is not supported; use an integer bit-width "
                                  f"in {MIN_BITS}..{MAX_BITS}")
        if not isinstance(self.scope, str) or not self.scope:
            raise ConfigError(f"scope={self.scope!r} must be a scope name (see bench.quant.scopes) or 'auto'")

    @property
    def tag(self) -> str:
        """e.g. "w4a4"."""
        return f"w{self.w_bits}a{self.a_bits}"


def _edge_convs(model: nn.Module) -> set[str]:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return {convs[0], convs[-1]} if convs else set()


def _wrap(module: nn.Module, rule: LayerRule, w_bits: int, a_bits: int, per_channel: bool) -> nn.Module:
    if isinstance(module, nn.Linear) and rule.split:
        return SplitQuantLinear(module, rule.split, w_bits, a_bits, per_channel=per_channel,
                                act_kind=rule.act_kinds[0])
    if isinstance(module, nn.Linear):
        return QuantLinear(module, w_bits, a_bits, per_channel=per_channel, act_kind=rule.act_kinds[0])
    if isinstance(module, nn.Conv2d):
        return QuantConv2d(module, w_bits, a_bits, per_channel=per_channel, act_kind=rule.act_kinds[0])
    kinds = rule.act_kinds if len(rule.act_kinds) == 2 else (rule.act_kinds[0],) * 2
    return QuantMatMul(a_bits, a_kind=kinds[0], b_kind=kinds[1])


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def _plan(model: nn.Module, scope: Scope) -> list[tuple[str, nn.Module, LayerRule]]:
    targets = []
    for path, module in model.named_modules():
        if not path:  # the root cannot be replaced in place; scopes target layers inside a network
            continue
        rule = scope.rule_for(path, module)
        if rule is not None:
            targets.append((path, module, rule))
    return targets


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """A deep copy of `model` with the scope's layers replaced by quantized wrappers (bounds uncalibrated).

    The copy records `quant_config` (QuantConfig) and `quant_scope` (resolved scope name).
    """
    if any(isinstance(m, QUANT_LAYER_TYPES) for m in model.modules()):
        raise ConfigError(f"{type(model).__name__} is already quantized; quantize the full-precision model")
    qmodel = copy.deepcopy(model)
    scope = resolve_scope(qmodel, config.scope)
    targets = _plan(qmodel, scope)
    edges = _edge_convs(qmodel) if scope.edge_convs is not None else set()
    if scope.edge_convs == FP:
        targets = [t for t in targets if t[0] not in edges]
    if not targets:
        raise ConfigError(f"quantization scope {scope.name!r} matches no layer of {type(model).__name__}; "
                          f"choose another scope (--scope)")
    for p in qmodel.parameters():
        p.requires_grad_(False)
    for path, module, rule in targets:
        w_bits, a_bits = config.w_bits, config.a_bits
        if path in edges:
            w_bits = a_bits = scope.edge_convs
        per_channel = bool(rule.per_channel) or config.per_channel_weights
        _set_submodule(qmodel, path, _wrap(module, rule, w_bits, a_bits, per_channel))
    qmodel.quant_config = config
    qmodel.quant_scope = scope.name
    return qmodel


def quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer]]:
    """Every FakeQuantizer of `qmodel` with its module path, in module order."""
    return [(name, m) for name, m in qmodel.named_modules() if isinstance(m, FakeQuantizer)]


def activation_quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer]]:
    return [(name, q) for name, q in quantizers(qmodel) if not q.is_weight]


def weight_quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer, torch.Tensor]]:
    """(name, quantizer, FP weight it quantizes) for every weight quantizer, in module order."""
    found = []
    for path, module in qmodel.named_modules():
        q = getattr(module, "weight_quant", None)
        if isinstance(q, FakeQuantizer) and isinstance(getattr(module, "weight", None), torch.Tensor):
            found.append((f"{path}.weight_quant" if path else "weight_quant", q, module.weight))
    return found


def bound_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """The `lower` and `upper` parameters of every quantizer (what PTQ methods may fine-tune)."""
    return [p for _, q in quantizers(qmodel) for p in (q.lower, q.upper)]


def set_quant_enabled(qmodel: nn.Module, enabled: bool) -> None:
    """Turn every quantizer on (fake-quant) or off (identity: the FP model)."""
    for _, q in quantizers(qmodel):
        q.enabled = bool(enabled)


@torch.no_grad()
def rewrite_fp_tensor(qmodel: nn.Module, name: str, value: torch.Tensor) -> None:
    """Overwrite the FP parameter or buffer `name` of the quantized copy (never of the FP model: quantize_model
    deep-copies it) and record the name, so that save_quantized stores the new value and load_quantized puts it
    back. For methods that reparameterise or transform weights before quantizing them (RepQ-ViT, NoisyQuant,
    CondiQuant); the tensor keeps its shape, dtype and frozen state."""
    try:
        target = qmodel.get_parameter(name)
    except AttributeError:
        try:
            target = qmodel.get_buffer(name)
        except AttributeError:
            raise ConfigError(f"{type(qmodel).__name__} has no parameter or buffer {name!r}") from None
    value = torch.as_tensor(value)
    if tuple(value.shape) != tuple(target.shape):
        raise ConfigError(f"cannot rewrite {name}: shape {tuple(value.shape)} != {tuple(target.shape)}")
    target.copy_(value.to(dtype=target.dtype, device=target.device))  # in place: the version bump drops caches
    names = getattr(qmodel, "quant_rewritten", None)
    if names is None:
        names = qmodel.quant_rewritten = []
    if name not in names:
        names.append(name)


def rewritten_fp_tensors(qmodel: nn.Module) -> dict[str, torch.Tensor]:
    """{name: current value} of every FP tensor a method rewrote (see `rewrite_fp_tensor`)."""
    state = dict(qmodel.named_parameters())
    state.update(dict(qmodel.named_buffers()))
    return {name: state[name].detach() for name in getattr(qmodel, "quant_rewritten", [])}


def uncalibrated(qmodel: nn.Module) -> list[str]:
    return [name for name, q in quantizers(qmodel) if not q.calibrated]


__all__ = ["QuantConfig", "quantize_model", "quantizers", "activation_quantizers", "weight_quantizers",
           "bound_parameters", "set_quant_enabled", "uncalibrated",
           "rewrite_fp_tensor", "rewritten_fp_tensors", "QuantLinear", "QuantConv2d", "QuantMatMul"]
