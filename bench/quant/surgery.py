"""Model surgery: `quantize_model` returns a quantized *copy* of a model (torchao `quantize_` style,
but the original is never touched), plus accessors for the inserted quantizers.

In the copy every parameter is frozen except the quantizer bounds: PTQ never updates weights, so
`[p for p in qmodel.parameters() if p.requires_grad]` is exactly the learnable bounds.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.layers import QUANT_LAYER_TYPES, QuantConv2d, QuantLinear, QuantMatMul, SplitQuantLinear
from bench.quant.quantizer import MAX_BITS, MIN_BITS, FakeQuantizer
from bench.quant.scopes import AUTO, FP, LayerRule, Scope, resolve_scope
from bench.quant.shared_grids import outputs_into_adds, placed_off, share_requantized_inputs

LayerBits = tuple[tuple[str, int, int], ...]


def _is_bits(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and MIN_BITS <= value <= MAX_BITS


def normalize_layer_bits(value: Mapping | Iterable | None) -> LayerBits:
    """{layer path: (w_bits, a_bits)} or (path, w_bits, a_bits) triples (a JSON round trip gives lists) -> the
    sorted tuple of triples QuantConfig stores (hashable, so the config stays a frozen value)."""
    if not value:
        return ()
    items = value.items() if isinstance(value, Mapping) else ((entry[0], entry[1:]) for entry in value)
    triples = {}
    for path, bits in items:
        bits = tuple(bits)
        if not isinstance(path, str) or not path or len(bits) != 2 or not all(_is_bits(b) for b in bits):
            raise ConfigError(f"layer_bits entry {path!r}: {bits!r} is not a (w_bits, a_bits) pair of integers in "
                              f"{MIN_BITS}..{MAX_BITS} for a layer path")
        triples[path] = (path, int(bits[0]), int(bits[1]))
    return tuple(triples[path] for path in sorted(triples))


@dataclass(frozen=True)
class QuantConfig:
    """Bit-widths and placement of a quantization. `per_channel_weights=True` makes every weight
    quantizer per-output-channel (scopes may also ask for it per rule, e.g. ptq4sr's convs).

    `layer_bits` (mixed precision): {layer path: (w_bits, a_bits)} for some of the layers the scope wraps (the
    paths `quantized_layers` lists); those layers get these bits, every other one `w_bits`/`a_bits` (or the
    scope's fixed edge bits). A MatMul has no weight: both its operands take the pair's a_bits. Stored as sorted
    (path, w_bits, a_bits) triples; empty = uniform bits, exactly as without it.
    """
    w_bits: int = 4
    a_bits: int = 4
    scope: str = AUTO
    per_channel_weights: bool = False
    layer_bits: LayerBits = ()

    def __post_init__(self) -> None:
        for field_name in ("w_bits", "a_bits"):
            value = getattr(self, field_name)
            if not _is_bits(value):
                raise ConfigError(f"{field_name}={value!r} is not supported; use an integer bit-width "
                                  f"in {MIN_BITS}..{MAX_BITS}")
        if not isinstance(self.scope, str) or not self.scope:
            raise ConfigError(f"scope={self.scope!r} must be a scope name (see bench.quant.scopes) or 'auto'")
        object.__setattr__(self, "layer_bits", normalize_layer_bits(self.layer_bits))

    @property
    def tag(self) -> str:
        """e.g. "w4a4"; "w4a4+mixed" when some layers have their own bits."""
        return f"w{self.w_bits}a{self.a_bits}" + ("+mixed" if self.layer_bits else "")

    def to_record(self) -> dict:
        """The fields as saved files store them; `layer_bits` only when set, so that a uniform quantization's
        files are byte for byte those written before per-layer bits existed."""
        record = asdict(self)
        if not self.layer_bits:
            del record["layer_bits"]
        return record

    def bits_map(self) -> dict[str, tuple[int, int]]:
        """{layer path: (w_bits, a_bits)} of `layer_bits`."""
        return {path: (w, a) for path, w, a in self.layer_bits}


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


def _targets(model: nn.Module, scope: Scope) -> tuple[list[tuple[str, nn.Module, LayerRule]], set[str]]:
    """(the layers `scope` wraps, the edge convs among them that take the scope's fixed bits)."""
    targets = _plan(model, scope)
    edges = _edge_convs(model) if scope.edge_convs is not None else set()
    if scope.edge_convs == FP:
        targets = [t for t in targets if t[0] not in edges]
    if not targets:
        raise ConfigError(f"quantization scope {scope.name!r} matches no layer of {type(model).__name__}; "
                          f"choose another scope (--scope)")
    return targets, edges


@dataclass(frozen=True)
class QuantizedLayer:
    """One layer a scope wraps: its module path (the key of QuantConfig.layer_bits), its module type
    ("Conv2d", "Linear" or "MatMul") and, for the scope's edge convs, their fixed bit-width (None otherwise)."""
    path: str
    module_type: str
    fixed_bits: int | None = None


def quantized_layers(model: nn.Module, scope: str = AUTO) -> list[QuantizedLayer]:
    """The layers `quantize_model(model, QuantConfig(scope=scope))` wraps, in module order (of an FP model)."""
    resolved = resolve_scope(model, scope)
    targets, edges = _targets(model, resolved)
    fixed = resolved.edge_convs if isinstance(resolved.edge_convs, int) else None
    return [QuantizedLayer(path, rule.module_type, fixed if path in edges else None) for path, _, rule in targets]


def quantize_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """A deep copy of `model` with the scope's layers replaced by quantized wrappers (bounds uncalibrated).

    The copy records `quant_config` (QuantConfig) and `quant_scope` (resolved scope name).
    """
    if any(isinstance(m, QUANT_LAYER_TYPES) for m in model.modules()):
        raise ConfigError(f"{type(model).__name__} is already quantized; quantize the full-precision model")
    qmodel = copy.deepcopy(model)
    scope = resolve_scope(qmodel, config.scope)
    targets, edges = _targets(qmodel, scope)
    per_layer = config.bits_map()
    unknown = sorted(set(per_layer) - {path for path, _, _ in targets})
    if unknown:
        raise ConfigError(f"layer_bits names {unknown[0]!r}, which scope {scope.name!r} does not quantize in "
                          f"{type(model).__name__}; use paths from bench.quant.quantized_layers(model, scope)")
    for p in qmodel.parameters():
        p.requires_grad_(False)
    outputs: dict[str, FakeQuantizer] = {}
    for path, module, rule in targets:
        w_bits, a_bits = config.w_bits, config.a_bits
        if path in edges:
            w_bits = a_bits = scope.edge_convs
        w_bits, a_bits = per_layer.get(path, (w_bits, a_bits))
        per_channel = bool(rule.per_channel) or config.per_channel_weights
        wrapper = _wrap(module, rule, w_bits, a_bits, per_channel)
        if scope.quantize_outputs and isinstance(wrapper, (QuantConv2d, QuantLinear)):
            attach_output_quantizer(wrapper, a_bits)
        _set_quantizer_types(wrapper, scope)
        _set_submodule(qmodel, path, wrapper)
        if scope.quantize_outputs and hasattr(wrapper, "output_quant"):
            outputs[f"{path}.output_quant"] = wrapper.output_quant
    qmodel.quant_config = config
    qmodel.quant_scope = scope.name
    # Outputs only residual adds read stay float, as OpenVINO computes them; then one grid per tensor, as integer
    # runtimes keep it (bench.quant.shared_grids)
    qmodel.adds_only_outputs = outputs_into_adds(qmodel, outputs) if outputs and scope.float_outputs_into_adds else []
    outputs = {name: q for name, q in outputs.items() if name not in qmodel.adds_only_outputs}
    qmodel.shared_input_quantizers = share_requantized_inputs(qmodel, outputs) if outputs else {}
    return qmodel


def _quantize_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return module.output_quant(output)


def attach_output_quantizer(layer: nn.Module, bits: int) -> FakeQuantizer:
    """Quantize `layer`'s output with a new activation quantizer `layer.output_quant` (a forward hook, so the
    wrapper classes and their state-dict names stay as they are; deepcopy and tracing keep the hook)."""
    layer.output_quant = FakeQuantizer(bits)
    layer.register_forward_hook(_quantize_output)
    return layer.output_quant


def _set_quantizer_types(wrapper: nn.Module, scope: Scope) -> None:
    """Give the wrapper's quantizers the scope's weight and activation types (nothing to do for uniform ones)."""
    if scope.weight_type == "uniform" and scope.act_type == "uniform":
        return
    from bench.quant.qtypes import make_quantizer, replace_quantizer
    for name, q in [(n, m) for n, m in wrapper.named_modules() if isinstance(m, FakeQuantizer)]:
        wanted = scope.weight_type if q.is_weight else scope.act_type
        if wanted != q.quant_type:
            replace_quantizer(wrapper, name, make_quantizer(wanted, q))


def quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer]]:
    """Every FakeQuantizer of `qmodel` with its module path, in module order."""
    return [(name, m) for name, m in qmodel.named_modules() if isinstance(m, FakeQuantizer)]


def activation_quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer]]:
    return [(name, q) for name, q in quantizers(qmodel) if not q.is_weight]


def weight_quantizers(qmodel: nn.Module) -> list[tuple[str, FakeQuantizer, torch.Tensor]]:
    """(name, quantizer, FP weight it quantizes) for every weight quantizer, in module order; for a layer with a
    weight transform (bench.quant.transforms) the weight it quantizes is T(W)."""
    found = []
    for path, module in qmodel.named_modules():
        q = getattr(module, "weight_quant", None)
        if isinstance(q, FakeQuantizer) and isinstance(getattr(module, "weight", None), torch.Tensor):
            weight = module.weight if getattr(module, "weight_transform", None) is None else module.quantizer_weight()
            found.append((f"{path}.weight_quant" if path else "weight_quant", q, weight))
    return found


def bound_parameters(qmodel: nn.Module) -> list[nn.Parameter]:
    """The `lower` and `upper` parameters of every quantizer (what PTQ methods may fine-tune)."""
    return [p for _, q in quantizers(qmodel) for p in (q.lower, q.upper)]


def set_quant_enabled(qmodel: nn.Module, enabled: bool) -> None:
    """Turn every quantizer on (fake-quant) or off (identity: the FP model). An input quantizer that shares
    its tensor's grid with an output quantizer (bench.quant.shared_grids) stays off: its tensor is quantized; so
    does an output quantizer that only residual adds read (the runtimes add that output in float)."""
    for _, q in quantizers(qmodel):
        q.enabled = bool(enabled) and not placed_off(q)


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


__all__ = ["QuantConfig", "QuantizedLayer", "normalize_layer_bits", "quantized_layers", "quantize_model",
           "quantizers", "activation_quantizers", "weight_quantizers",
           "bound_parameters", "set_quant_enabled", "uncalibrated",
           "rewrite_fp_tensor", "rewritten_fp_tensors", "QuantLinear", "QuantConv2d", "QuantMatMul"]
