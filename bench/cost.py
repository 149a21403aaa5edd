"""Cost model: parameters, quantized weights, compression, MACs, ops and speed-up (spec §6).

Everything is counted from the model itself, so the same code serves every architecture:
  * parameters by walking `named_parameters()`, minus an explicit exclusion list (the paper leaves
    SwinIR's relative-position-bias tables out of its 897,228);
  * MACs by forward hooks on `Conv2d`, `Linear`, `MatMul` (and `LayerNorm`, counted as one op per
    element, SwinIR's convention) during one forward pass on a fixed LR input (default 128x128);
  * what is quantized, and at which bit-width, from the quantizers `bench.quant.quantize_model` inserted:
    a quantizer belongs to the counted layer whose name is the longest prefix of the quantizer's name.

Two MAC totals are reported. "counted" is the true count from the hooks. "paper" reproduces how a paper
counted (e.g. SwinIR's analytic `flops()`, with its quirks): the model may expose
`paper_flops(h, w) -> {"linear", "matmul", "conv", "other"}`, else a rule registered in `bench.cost_rules`
for its architecture is used, else the paper rule is the counted one.

Ops at b bits follow the paper's linear-in-bits rule: a MAC whose operands are quantized to (b_w, b_a) costs
max(b_w, b_a)/32 of an FP32 MAC, everything else costs 1; speed-up = ops_FP / ops(b). The BOPs speed-up
charges b_w*b_a/32^2 instead and is labelled as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.cost_rules import find_cost_rule
from models.layers import MatMul

# Parameters left out of P (and of the model size), matched as substrings of the parameter name.
# The 2DQuant and SwinIR papers count SwinIR-light without its relative-position-bias tables
# (897,228 instead of 929,628 at x4); we follow them so that compression ratios are comparable.
EXCLUDED_PARAMETER_PATTERNS: tuple[str, ...] = ("relative_position_bias_table",)

FP_BITS = 32
CATEGORIES = ("linear", "matmul", "conv", "other")
_KIND_TO_CATEGORY = {"linear": "linear", "matmul": "matmul", "conv": "conv", "norm": "other"}


@dataclass(frozen=True)
class LayerCount:
    """MACs of one module at the analysed input size, and its operand bit-widths once quantized."""
    name: str
    kind: str  # "conv" | "linear" | "matmul" | "norm"
    macs: int
    weight_numel: int = 0
    # (first operand, second operand) bits: (weight, input) for conv/linear, (a, b) for a matmul.
    operand_bits: tuple[int, int] = (FP_BITS, FP_BITS)
    weight_quantized: bool = False

    @property
    def category(self) -> str:
        return _KIND_TO_CATEGORY[self.kind]

    @property
    def quantized(self) -> bool:
        return min(self.operand_bits) < FP_BITS

    @property
    def linear_rule_factor(self) -> float:
        # A b x b MAC costs b/32 of an FP32 MAC; with mixed widths the wider operand sets the cost.
        return max(self.operand_bits) / FP_BITS if self.quantized else 1.0

    @property
    def bops_factor(self) -> float:
        return self.operand_bits[0] * self.operand_bits[1] / FP_BITS ** 2 if self.quantized else 1.0


# ----------------------------------------------------------------------------------------------- counting

def count_parameters(model: nn.Module,
                     exclude: tuple[str, ...] = EXCLUDED_PARAMETER_PATTERNS) -> tuple[int, int]:
    """(counted, excluded) parameter numbers; a parameter is excluded if its name contains a pattern."""
    counted = excluded = 0
    for name, param in model.named_parameters():
        if any(pattern in name for pattern in exclude):
            excluded += param.numel()
        else:
            counted += param.numel()
    return counted, excluded


def _macs_of(module: nn.Module, inputs: tuple, output: torch.Tensor) -> tuple[str, int] | None:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return "conv", output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return "linear", output.numel() * module.in_features
    if isinstance(module, MatMul):
        return "matmul", output.numel() * inputs[0].shape[-1]
    if isinstance(module, nn.LayerNorm):
        return "norm", inputs[0].numel()
    return None


def count_layer_macs(model: nn.Module, lr_size: tuple[int, int] = (128, 128)) -> list[LayerCount]:
    """MACs per Conv2d/Linear/MatMul/LayerNorm for one (1, 3, h, w) input, in call order.

    The forward runs on a copy of the model on PyTorch's "meta" device (shapes only: no arithmetic, no
    memory), falling back to a real forward for models whose code needs actual values.
    A module called several times (shared weights, recursive blocks) accumulates all its calls.
    """
    import copy
    try:
        return _count_with_hooks(copy.deepcopy(model).to("meta"), lr_size, torch.device("meta"))
    except Exception:  # noqa: BLE001 - any failure of data-dependent code (e.g. .item()) on meta tensors
        param = next(model.parameters(), None)
        return _count_with_hooks(model, lr_size, param.device if param is not None else torch.device("cpu"))


def _count_with_hooks(model: nn.Module, lr_size: tuple[int, int], device: torch.device) -> list[LayerCount]:
    kinds: dict[str, str] = {}
    macs: dict[str, int] = {}
    modules: dict[str, nn.Module] = {}

    def make_hook(name: str):
        def hook(module, inputs, output):
            found = _macs_of(module, inputs, output)
            if found is not None:
                kinds[name] = found[0]
                macs[name] = macs.get(name, 0) + found[1]
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, MatMul, nn.LayerNorm)):
            modules[name] = module
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *lr_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return [LayerCount(name, kinds[name], macs[name], _weight_numel(modules[name], kinds[name]))
            for name in macs]


def _weight_numel(module: nn.Module, kind: str) -> int:
    weight = getattr(module, "weight", None)
    return weight.numel() if kind in ("conv", "linear") and isinstance(weight, torch.Tensor) else 0


def _owner(quantizer_name: str, layer_names: list[str]) -> str | None:
    """The counted layer a quantizer belongs to: the longest layer name that prefixes the quantizer's."""
    best = None
    for name in layer_names:
        if quantizer_name.startswith(name + ".") and (best is None or len(name) > len(best)):
            best = name
    return best


def _quantizer_bits(quantizer: nn.Module) -> int:
    for attr in ("bits", "n_bits", "num_bits"):
        value = getattr(quantizer, attr, None)
        if value is not None:
            return int(value)
    raise AttributeError(f"{type(quantizer).__name__} has no bit-width attribute")


def attach_quantization(layers: list[LayerCount], qmodel: nn.Module) -> list[LayerCount]:
    """Copy of `layers` with the operand bit-widths of the quantizers that `qmodel` placed in each layer."""
    from bench.quant import (
        quantizers,  # the quant core is only needed when something is quantized
    )

    names = [layer.name for layer in layers]
    weight_bits: dict[str, int] = {}
    act_bits: dict[str, list[int]] = {}
    for qname, quantizer in quantizers(qmodel):
        owner = _owner(qname, names)
        if owner is None:
            continue
        bits = _quantizer_bits(quantizer)
        if getattr(quantizer, "is_weight", False):
            weight_bits[owner] = max(bits, weight_bits.get(owner, 0))
        else:
            act_bits.setdefault(owner, []).append(bits)
    result = []
    for layer in layers:
        acts = act_bits.get(layer.name, [])
        if layer.kind == "matmul":
            # Both operands are activations; a missing quantizer leaves that operand FP32.
            first = acts[0] if acts else FP_BITS
            second = acts[1] if len(acts) > 1 else FP_BITS
            bits = (first, second)
        else:
            bits = (weight_bits.get(layer.name, FP_BITS), max(acts) if acts else FP_BITS)
        result.append(LayerCount(layer.name, layer.kind, layer.macs, layer.weight_numel, bits,
                                 layer.name in weight_bits))
    return result


def quantizer_scalars(qmodel: nn.Module) -> int:
    """Learned bound scalars of all quantizers (2 per per-tensor quantizer; more when per-channel)."""
    from bench.quant import quantizers

    total = 0
    for _name, quantizer in quantizers(qmodel):
        for attr in ("lower", "upper"):
            value = getattr(quantizer, attr, None)
            total += value.numel() if isinstance(value, torch.Tensor) else 1
        total += getattr(quantizer, "extra_scalars", 0)  # a type's stored parameters besides l, u (twin-uniform's shift)
    return total


# ------------------------------------------------------------------------------------------- the report

@dataclass(frozen=True)
class MacBreakdown:
    linear: float
    matmul: float
    conv: float
    other: float

    @property
    def total(self) -> float:
        return self.linear + self.matmul + self.conv + self.other

    @property
    def linear_bmm(self) -> float:
        return self.linear + self.matmul

    def as_dict(self) -> dict[str, float]:
        return {"linear": self.linear, "matmul": self.matmul, "conv": self.conv, "other": self.other,
                "total": self.total}

    @classmethod
    def of_layers(cls, layers: list[LayerCount], factor: str | None = None) -> MacBreakdown:
        sums = dict.fromkeys(CATEGORIES, 0.0)
        for layer in layers:
            sums[layer.category] += layer.macs * (getattr(layer, factor) if factor else 1.0)
        return cls(**sums)

    @classmethod
    def from_mapping(cls, values: dict) -> MacBreakdown:
        unknown = set(values) - set(CATEGORIES) - {"total"}
        if unknown:
            raise ValueError(f"paper MAC breakdown has unknown categories {sorted(unknown)}; use {CATEGORIES}")
        return cls(**{c: float(values.get(c, 0.0)) for c in CATEGORIES})


@dataclass
class CostReport:
    """Cost of one model at one scale and one quantization (bits live in `layers`)."""
    model: str
    scale: int
    lr_size: tuple[int, int]
    params: int                    # P: excluding EXCLUDED_PARAMETER_PATTERNS
    params_excluded: int
    layers: list[LayerCount]
    paper_fp: MacBreakdown         # FP MACs under the paper rule (== counted when the model has no rule)
    paper_rule: str                # "paper:<rule name>" or "counted"
    quantizer_scalars: int = 0
    scope: str | None = None       # resolved quantization scope (None for the FP model)
    excluded_patterns: tuple[str, ...] = field(default=EXCLUDED_PARAMETER_PATTERNS)

    # ---- parameters and size
    @property
    def quantized_weights(self) -> int:
        """Q: weights of the layers that carry a weight quantizer."""
        return sum(layer.weight_numel for layer in self.layers if layer.weight_quantized)

    @property
    def effective_params(self) -> float:
        """P - Q + sum(Q_l * b_l / 32): parameters in FP32 units."""
        packed = sum(layer.weight_numel * layer.operand_bits[0] / FP_BITS
                     for layer in self.layers if layer.weight_quantized)
        return self.params - self.quantized_weights + packed

    @property
    def compression(self) -> float:
        return self.params / self.effective_params

    @property
    def size_bytes(self) -> int:
        """Quantized weights packed at their bit-width + other parameters as FP32 + 2 floats per quantizer."""
        packed = sum(math.ceil(layer.weight_numel * layer.operand_bits[0] / 8)
                     for layer in self.layers if layer.weight_quantized)
        return packed + 4 * (self.params - self.quantized_weights) + 4 * self.quantizer_scalars

    @property
    def fp_size_bytes(self) -> int:
        return 4 * self.params

    # ---- MACs and ops
    @property
    def counted_fp(self) -> MacBreakdown:
        return MacBreakdown.of_layers(self.layers)

    def _category_factor(self, factor: str) -> dict[str, float]:
        """Per category, the MAC-weighted mean cost factor of its layers (1 when nothing is quantized)."""
        fp = self.counted_fp.as_dict()
        scaled = MacBreakdown.of_layers(self.layers, factor).as_dict()
        return {c: (scaled[c] / fp[c] if fp[c] else 1.0) for c in CATEGORIES}

    def _ops(self, factor: str, rule: str) -> float:
        if rule == "counted":
            return MacBreakdown.of_layers(self.layers, factor).total
        # The paper rule gives per-category FP totals; quantization scales each category by the
        # share the counted layers of that category are charged (exact when a category is all-or-nothing).
        weights = self._category_factor(factor)
        paper = self.paper_fp.as_dict()
        return sum(paper[c] * weights[c] for c in CATEGORIES)

    def ops(self, rule: str = "paper") -> float:
        """MACs charged by the linear-in-bits rule (b/32 per quantized MAC)."""
        return self._ops("linear_rule_factor", rule)

    def fp_ops(self, rule: str = "paper") -> float:
        return self.paper_fp.total if rule == "paper" else self.counted_fp.total

    def speedup(self, rule: str = "paper") -> float:
        return self.fp_ops(rule) / self.ops(rule)

    def bops(self, rule: str = "paper") -> float:
        return self._ops("bops_factor", rule)

    def bops_speedup(self, rule: str = "paper") -> float:
        return self.fp_ops(rule) / self.bops(rule)

    def summary(self) -> dict:
        """Flat numbers for a result record."""
        return {
            "params": self.params,
            "params_excluded": self.params_excluded,
            "quantized_weights": self.quantized_weights,
            "model_size_bytes": self.size_bytes,
            "fp_size_bytes": self.fp_size_bytes,
            "compression": self.compression,
            "ops_rule": self.paper_rule,
            "quant_scope": self.scope,
            "fp_ops": self.fp_ops("paper"),
            "ops": self.ops("paper"),
            "speedup": self.speedup("paper"),
            "bops_speedup": self.bops_speedup("paper"),
            "fp_ops_counted": self.fp_ops("counted"),
            "ops_counted": self.ops("counted"),
            "speedup_counted": self.speedup("counted"),
            "cost_lr_size": list(self.lr_size),
        }


def compression_ratio(params: int, quantized: int, bits: int) -> float:
    """The paper's formula, P / (P - Q + Q*b/32)."""
    return params / (params - quantized + quantized * bits / FP_BITS)


def paper_breakdown(model: nn.Module, model_name: str, scale: int, layers: list[LayerCount],
                    lr_size: tuple[int, int]) -> tuple[MacBreakdown, str]:
    """FP MACs the way the model's paper counted them: model hook, then registered rule, else counted."""
    hook = getattr(model, "paper_flops", None)
    if callable(hook):
        return MacBreakdown.from_mapping(hook(*lr_size)), "paper:model.paper_flops"
    rule = find_cost_rule(model, model_name)
    values = None if rule is None else rule.fn(model=model, layers=layers, lr_size=lr_size, scale=scale)
    if values is not None:
        return MacBreakdown.from_mapping(values), f"paper:{rule.name}"
    return MacBreakdown.of_layers(layers), "counted"


def analyze(fp_model: nn.Module, model_name: str, scale: int, qmodel: nn.Module | None = None,
            lr_size: tuple[int, int] = (128, 128),
            layers: list[LayerCount] | None = None) -> CostReport:
    """Cost of `qmodel` (or of the FP model when None). Pass `layers` from `count_layer_macs` to reuse
    one forward pass across bit-widths."""
    if layers is None:
        layers = count_layer_macs(fp_model, lr_size)
    paper, rule_name = paper_breakdown(fp_model, model_name, scale, layers, lr_size)
    params, excluded = count_parameters(fp_model)
    if qmodel is not None:
        layers = attach_quantization(layers, qmodel)
    return CostReport(model=model_name, scale=scale, lr_size=tuple(lr_size), params=params,
                      params_excluded=excluded, layers=layers, paper_fp=paper, paper_rule=rule_name,
                      quantizer_scalars=quantizer_scalars(qmodel) if qmodel is not None else 0,
                      scope=getattr(qmodel, "quant_scope", None))


def model_cost(model_name: str, scale: int, bits: list[tuple[int, int]], lr_size: tuple[int, int] = (128, 128),
               scope: str = "auto") -> tuple[CostReport, list[CostReport]]:
    """FP report and one report per (w_bits, a_bits) for a registered model with random weights
    (costs do not depend on weight values)."""
    from bench.quant import QuantConfig, quantize_model
    from models import create_model

    fp_model = create_model(model_name, scale, weights="random")
    layers = count_layer_macs(fp_model, lr_size)
    fp_report = analyze(fp_model, model_name, scale, None, lr_size, layers)
    reports = []
    for w_bits, a_bits in bits:
        qmodel = quantize_model(fp_model, QuantConfig(w_bits=w_bits, a_bits=a_bits, scope=scope))
        reports.append(analyze(fp_model, model_name, scale, qmodel, lr_size, layers))
    return fp_report, reports
