"""Quantization scopes as data: which modules get wrapped, how, and at which bit-width.

A scope is an ordered list of `LayerRule`s matched against module paths (fnmatch globs, `*` also matches
dots) and module types; the first matching rule wins and unmatched modules stay FP. The core names no
architecture: the scopes below only rely on module *names* (SwinIR-style `*.attn.qkv`) and on the generic
`models.layers.MatMul`.

Built-in scopes:
  * `2dquant` (spec §2.1): the fused `*.attn.qkv` split into q/k/v (own weight and own input quantizer each),
    `*.attn.proj`, `*.mlp.fc1`, `*.mlp.fc2` (input tagged act_gelu), the BMMs `*.attn.matmul_qk` (q, k)
    and `*.attn.matmul_av` (softmax map tagged act_softmax, v); per-tensor; everything else FP.
  * `ptq4sr` (spec §4.4, native PTQ4SR): every Conv2d (per-output-channel weights) and Linear (per-tensor),
    the first and the last Conv2d in module order at 8 bits; no BMM.
  * `fp-edges`: `ptq4sr` with the first and the last Conv2d left in full precision instead of 8 bits, the
    body-only convention of most CNN SR quantization work (PAMS and its successors quantize the body and keep
    the head and the tail FP). At W8A8 on IMDN x2 the 8-bit input of the last conv alone costs 0.16 dB
    (results/reference/imdn-w8a8.md), so the two scopes answer different questions.
  * `2dquant+convs`: `2dquant`'s rules for the Swin blocks, then `ptq4sr`'s for every other Conv2d and Linear
    (per-channel conv weights, first and last conv 8-bit): a CNN with transformer blocks inside (IMDTN) gets
    both its convs and its attention quantized, the Swin blocks exactly as on SwinIR.
  * `deploy`: what an integer runtime (OpenVINO, onnxruntime) executes in int8, for CNNs and transformers alike:
    every Conv2d and Linear with per-output-channel weights (the fused qkv kept whole, as a runtime runs it), the
    attention BMMs, the first and last conv included, at the config's bits; weights on the `int-symmetric` grid
    (zero point 0, narrow range) and activations on the `int-zero-point` grid (bench/quant/integer_grid.py), so
    the fake-quant model computes what the runtime computes; each conv's and linear's output is quantized too, so
    that the runtime's chain conv -> activation -> conv stays in integers (docs/deployment.md), except an output
    that only residual adds read: it stays float, because OpenVINO applies a quantizer between a conv and the sum
    it fuses into that conv without rounding and onnxruntime with it (bench/quant/shared_grids.py); without the
    quantizer both runtimes compute what the fake quant computes, and onnxruntime runs those convs in float.
  * `deploy-ort`: `deploy` with the outputs into residual adds quantized too: onnxruntime fuses every conv into a
    QLinearConv (its fastest placement) and computes what the fake quant computes; OpenVINO does not round those
    outputs (IMDN x2 MinMax W7A8: 0.086 dB above the fake quant on Set5).
  * `auto`: the model's registry default (`quant_scopes[0]`) when the model is known, else `2dquant` if the
    model has MatMul modules, else `ptq4sr`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.quantizer import ACT, ACT_GELU, ACT_SOFTMAX, MAX_BITS, MIN_BITS
from models.layers import MatMul

AUTO = "auto"
FP = "fp"  # edge_convs value: leave the first and last conv unquantized

# Module types a rule can name; MatMul is the project's generic BMM module.
MODULE_TYPES: dict[str, type[nn.Module]] = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "MatMul": MatMul}


@dataclass(frozen=True)
class LayerRule:
    """Wrap modules of `module_type` whose path matches `pattern`.

    act_kinds: the kind tag of each input quantizer (one for Linear/Conv2d, two for MatMul: a, b).
    split: non-empty = split a Linear along its outputs into these named parts (fused qkv).
    per_channel: per-output-channel weights; None = as the QuantConfig says.
    """
    pattern: str
    module_type: str
    act_kinds: tuple[str, ...] = (ACT,)
    split: tuple[str, ...] = ()
    per_channel: bool | None = None

    def matches(self, path: str, module: nn.Module) -> bool:
        return isinstance(module, MODULE_TYPES[self.module_type]) and fnmatch.fnmatchcase(path, self.pattern)


@dataclass(frozen=True)
class Scope:
    name: str
    description: str
    rules: tuple[LayerRule, ...]
    # The first and last Conv2d of the model: None = as the rules say, an int = that bit-width for their weights
    # and input, FP = left unquantized even where a rule matches them.
    edge_convs: int | str | None = None
    # Quantizer types (bench.quant.qtypes) of the wrapped layers' weights and activations: "uniform" is spec §2.3;
    # the deploy scope asks for the integer grids a runtime executes.
    weight_type: str = "uniform"
    act_type: str = "uniform"
    # Also quantize each wrapped Conv2d/Linear's output (an `output_quant` at the layer's a_bits): the QDQ pair an
    # integer runtime needs after an op to keep the next op in integers (onnxruntime fuses DQ -> Conv -> Q into
    # QLinearConv only with it).
    quantize_outputs: bool = False
    # With quantize_outputs: leave a layer's output float when only residual adds read it (bench.quant.shared_grids)
    float_outputs_into_adds: bool = False

    def rule_for(self, path: str, module: nn.Module) -> LayerRule | None:
        for rule in self.rules:
            if rule.matches(path, module):
                return rule
        return None


SCOPES: dict[str, Scope] = {}


def register_scope(scope: Scope) -> Scope:
    edges = scope.edge_convs
    if not (edges is None or edges == FP or (isinstance(edges, int) and MIN_BITS <= edges <= MAX_BITS)):
        raise ValueError(f"scope {scope.name!r}: edge_convs must be None, {FP!r} or a bit-width, got {edges!r}")
    for rule in scope.rules:
        if rule.module_type not in MODULE_TYPES:
            raise ValueError(f"scope {scope.name!r}: unknown module type {rule.module_type!r}")
    if scope.name in SCOPES and SCOPES[scope.name] != scope:
        raise ValueError(f"scope {scope.name!r} is registered twice")
    SCOPES[scope.name] = scope
    return scope


def list_scopes() -> list[str]:
    return sorted(SCOPES)


def get_scope(name: str) -> Scope:
    if name not in SCOPES:
        raise ConfigError(f"unknown quantization scope {name!r}; use one of: {', '.join([AUTO] + list_scopes())}")
    return SCOPES[name]


register_scope(Scope(
    name="2dquant",
    description="2DQuant (spec 2.1): q/k/v (split qkv), proj, fc1, fc2 and both attention BMMs; per-tensor; convs FP",
    rules=(
        LayerRule("*.attn.qkv", "Linear", split=("q", "k", "v")),
        LayerRule("*.attn.proj", "Linear"),
        LayerRule("*.mlp.fc1", "Linear"),
        LayerRule("*.mlp.fc2", "Linear", act_kinds=(ACT_GELU,)),
        LayerRule("*.attn.matmul_qk", "MatMul", act_kinds=(ACT, ACT)),
        LayerRule("*.attn.matmul_av", "MatMul", act_kinds=(ACT_SOFTMAX, ACT)),
    ),
))

# PTQ4SR's placement (spec 4.4): every conv (per-output-channel weights) and linear (per-tensor).
_EVERY_CONV_AND_LINEAR = (
    LayerRule("*", "Conv2d", per_channel=True),
    LayerRule("*", "Linear"),
)

register_scope(Scope(
    name="ptq4sr",
    description="PTQ4SR native (spec 4.4): every Conv2d (per-channel weights) and Linear; first/last conv "
                "8-bit; no BMM",
    rules=_EVERY_CONV_AND_LINEAR,
    edge_convs=8,
))

register_scope(Scope(
    name="fp-edges",
    description="ptq4sr with the first and last conv FP (body-only, PAMS-style): every other Conv2d "
                "(per-channel weights) and Linear; no BMM",
    rules=_EVERY_CONV_AND_LINEAR,
    edge_convs=FP,
))

# Composition, not a copy: the 2dquant rules come first, so a Swin linear is split and tagged as in 2dquant and
# only the modules no 2dquant rule matches fall through to ptq4sr's placement.
register_scope(Scope(
    name="2dquant+convs",
    description="2dquant's Swin placement (split q/k/v, proj, fc1, fc2, both BMMs; per-tensor) plus ptq4sr's for "
                "every other Conv2d (per-channel weights) and Linear; first/last conv 8-bit",
    rules=SCOPES["2dquant"].rules + _EVERY_CONV_AND_LINEAR,
    edge_convs=8,
))


# Deployable placement: the attention as a runtime runs it (qkv whole: one input, one int8 matmul), then every
# other conv and linear; per-channel weights throughout, as onnxruntime's per-channel and NNCF's defaults.
_DEPLOY_RULES = (
    LayerRule("*.mlp.fc2", "Linear", act_kinds=(ACT_GELU,), per_channel=True),
    LayerRule("*.attn.matmul_qk", "MatMul", act_kinds=(ACT, ACT)),
    LayerRule("*.attn.matmul_av", "MatMul", act_kinds=(ACT_SOFTMAX, ACT)),
    LayerRule("*", "Conv2d", per_channel=True),
    LayerRule("*", "Linear", per_channel=True),
)
register_scope(Scope(
    name="deploy",
    description="integer-runtime placement: every Conv2d and Linear (per-channel symmetric int weights, qkv whole), "
                "both attention BMMs, edges included; activations with integer zero points; outputs that only "
                "residual adds read stay float (OpenVINO and onnxruntime then compute the same)",
    rules=_DEPLOY_RULES,
    weight_type="int-symmetric",
    act_type="int-zero-point",
    quantize_outputs=True,
    float_outputs_into_adds=True,
))
register_scope(Scope(
    name="deploy-ort",
    description="deploy with every conv/linear output quantized, residual adds' inputs included: one QLinearConv per "
                "conv in onnxruntime (OpenVINO skips the rounding of the outputs into adds)",
    rules=_DEPLOY_RULES,
    weight_type="int-symmetric",
    act_type="int-zero-point",
    quantize_outputs=True,
))


def _registry_default(model: nn.Module) -> str | None:
    # create_model may record the registry name on the module; a model built by hand is simply unknown.
    from models.registry import MODEL_REGISTRY
    for attr in ("model_name", "registry_name", "name"):
        name = getattr(model, attr, None)
        if isinstance(name, str) and name in MODEL_REGISTRY and MODEL_REGISTRY[name].quant_scopes:
            return MODEL_REGISTRY[name].quant_scopes[0]
    return None


def resolve_scope(model: nn.Module, name: str = AUTO) -> Scope:
    """The scope named `name`, or for "auto" the model's default (see module docstring)."""
    if name != AUTO:
        return get_scope(name)
    default = _registry_default(model)
    if default is not None:
        return get_scope(default)
    has_matmul = any(isinstance(m, MatMul) for m in model.modules())
    return get_scope("2dquant" if has_matmul else "ptq4sr")
