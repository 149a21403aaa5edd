"""Paper-specific MAC-counting rules, keyed by architecture family (`@register_cost_rule("swinir")`).

A paper's published "FLOPs" often come from an analytic formula that differs from the true count.
To compare with the paper we reproduce its formula here, outside the generic counter in `bench.cost`.
A rule receives the per-layer counts from the hooks and returns the paper's FP totals per category
{"linear", "matmul", "conv", "other"}. A model can override every rule by exposing
`paper_flops(h, w)` returning the same mapping.

Rules match a model when the key equals its registry name, prefixes it ("swinir" -> "swinir-light"),
or equals its class name in lower case.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from torch import nn

CostRuleFn = Callable[..., dict]


class CountedLayer(Protocol):
    """What a rule reads of one counted layer (`bench.cost.LayerCount` is one). Declared here, not imported, so
    that the generic counter depends on the rules and never the other way round."""
    name: str
    macs: int

    @property
    def category(self) -> str: ...


@dataclass(frozen=True)
class CostRule:
    name: str
    fn: CostRuleFn
    description: str = ""


COST_RULES: dict[str, CostRule] = {}


def register_cost_rule(name: str, description: str = ""):
    """Decorator: `fn(*, model, layers, lr_size, scale) -> {"linear", "matmul", "conv", "other"}`, or None
    when the rule does not apply to this variant of the architecture."""
    def decorator(fn: CostRuleFn) -> CostRuleFn:
        COST_RULES[name] = CostRule(name, fn, description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return decorator


def find_cost_rule(model: nn.Module, model_name: str) -> CostRule | None:
    class_name = type(model).__name__.lower()
    for key, rule in COST_RULES.items():
        if model_name == key or model_name.startswith(key + "-") or class_name == key:
            return rule
    return None


@register_cost_rule("swinir")
def swinir_flops_rule(*, model: nn.Module, layers: list[CountedLayer], lr_size: tuple[int, int],
                      scale: int) -> dict:
    """SwinIR's analytic flops() (pixelshuffledirect upsampler), as used for the 2DQuant paper's 16.74 G.

    Derived from the hook counts by the module names of the official checkpoint layout, with the formula's
    three departures from the true count:
      * `conv_after_body` is charged 3*C^2 MACs per pixel instead of 9*C^2 (i.e. a third);
      * the upsampler conv (`upsample.0`, C -> 3*s^2) is charged C*3*9 per LR pixel whatever the scale,
        and is listed under "other" (the paper's Table 2 groups it there);
      * the final LayerNorm (`norm`) is not counted at all; the patch-embed and block LayerNorms count one
        op per element.
    """
    if any(layer.name.startswith("conv_before_upsample") for layer in layers):
        return None  # classical SwinIR's flops() does not count its upsampler at all: no paper rule
    totals = {"linear": 0, "matmul": 0, "conv": 0, "other": 0}
    for layer in layers:
        if layer.name == "norm":
            continue
        if layer.name == "conv_after_body":
            totals["conv"] += layer.macs // 3
        elif layer.name == "upsample.0":
            totals["other"] += layer.macs // (scale * scale)
        else:
            totals[layer.category] += layer.macs
    return totals
