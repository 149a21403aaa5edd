"""NoisyQuant (Liu et al., CVPR 2023, arXiv 2211.16056): a fixed noisy bias before activation quantization.

For each target activation x (the input of a Linear or Conv2d layer with weight W and bias b):
  1. bounds (l, u) of every quantizer from a registered range rule (`base`, default DOBI) on the FP tensors;
  2. a noisy bias N, one value per input channel, sampled once (seeded, `seed`) from U(-K/2, K/2) with
     K = `amplitude` * s and s = (u - l) / (2^b - 1) the quantizer's step from step 1;
  3. the layer computes W Q(x + N) + b - W N: the quantizer becomes the core's `noisy` type (adds N before
     rounding, bench/quant/noisy.py) and the bias is rewritten to b - W N (`rewrite_fp_tensor`, saved with the
     file), so with the quantizers off the layer is the FP layer;
  4. the bounds of the target quantizers are calibrated again with the same rule, now on x + N (the tensor
     the quantizer rounds).
The paper (its pipeline figure) applies the noisy bias to the post-GELU activations of the MLP (the input of
fc2), whose peaked, heavy-tailed histogram is where it shows the error reduction: `targets="gelu"`
(default; quantizers of kind act_gelu). `targets="all"` adds it to the input of every quantized Linear/Conv2d,
which is how the method applies to CNNs. Batch-matmul operands (attention) have no bias to absorb W N and are never targets.

Convolutions: b - W N with W summed over the kernel cancels the noise exactly where the whole kernel window
lies inside the image; with zero padding the border outputs keep part of the noise (the padded zeros carry
no N). Linear layers cancel it exactly everywhere.

Steps 1, 2 and 4 are this project's choices where the paper's readable text is silent: the noise range is
the quantizer's step (`amplitude=1`, recorded), not searched per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.noisy import NoisyFakeQuantizer
from bench.quant.pipeline import CalibContext
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.quantizer import ACT_GELU, FakeQuantizer
from bench.quant.surgery import rewrite_fp_tensor
from methods.base import PTQMethod, RangeRuleMethod
from methods.registry import create_method, register_method


@dataclass(frozen=True)
class Target:
    """One activation quantizer that gets a noisy bias, and the layer whose bias absorbs it."""
    quantizer_name: str          # path of the input quantizer, from bench.quant.quantizers()
    layer_name: str              # path of the Linear/Conv2d that owns it
    layer: nn.Module
    axis: int                    # channel axis of the layer's input: -1 (Linear), 1 (Conv2d, NCHW)
    channels: int


def find_targets(qmodel: nn.Module, targets: str) -> list[Target]:
    """Input quantizers of quantized Linear/Conv2d layers: post-GELU ones ("gelu") or all of them ("all")."""
    found = []
    for path, module in qmodel.named_modules():
        q = getattr(module, "input_quant", None)
        if not isinstance(q, FakeQuantizer) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if targets == "gelu" and q.kind != ACT_GELU:
            continue
        linear = isinstance(module, nn.Linear)
        found.append(Target(f"{path}.input_quant", path, module, -1 if linear else 1,
                            module.in_features if linear else module.in_channels))
    return found


def noise_response(layer: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """W N: what the layer adds to every output for a constant input N (per output channel)."""
    weight = layer.weight.detach().double()
    noise = noise.double()
    if isinstance(layer, nn.Linear):
        return weight @ noise
    # Conv2d: a constant map N gives sum over the kernel window; grouped convs see only their group's channels
    groups = layer.groups
    summed = weight.sum(dim=(2, 3))                                   # (out, in / groups)
    out_per_group = summed.shape[0] // groups
    per_group = summed.view(groups, out_per_group, -1) @ noise.view(groups, -1, 1)
    return per_group.reshape(-1)


@register_method("noisyquant")
class NoisyQuant(PTQMethod):
    """NoisyQuant: a fixed uniform noisy bias on post-GELU activations, removed through the next layer's bias."""

    @dataclass(frozen=True)
    class Params:
        base: str = "dobi"                       # registered range-rule method for all bounds (before and after)
        targets: Literal["gelu", "all"] = "gelu"  # post-GELU fc2 inputs (paper) or every Linear/Conv2d input
        amplitude: float = 1.0                   # K = amplitude * step: N ~ U(-K/2, K/2)
        seed: int = 0                            # the noisy bias is sampled once from this seed

        def __post_init__(self) -> None:
            if not self.amplitude > 0:
                raise ValueError(f"amplitude={self.amplitude} must be > 0 (noise range in quantization steps)")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.noised: dict[str, float] = {}      # quantizer name -> the step s its noise range was drawn from

    def base_method(self) -> RangeRuleMethod:
        try:
            method = create_method(self.params.base)
        except KeyError as exc:
            raise ConfigError(f"noisyquant base={self.params.base!r}: {exc}") from None
        if not isinstance(method, RangeRuleMethod):
            raise ConfigError(f"noisyquant base={self.params.base!r} is not a range-rule method; use one that "
                              f"sets bounds from each tensor alone (minmax, percentile, emmse, dobi)")
        return method

    def describe(self) -> dict:
        record = super().describe()
        record["noised"] = {"quantizers": len(self.noised), "steps": dict(self.noised)}
        return record

    def _targets(self, qmodel: nn.Module) -> list[Target]:
        found = find_targets(qmodel, self.params.targets)
        if not found:
            what = ("no post-GELU activation quantizer (kind act_gelu) at the input of a quantized Linear/Conv2d"
                    if self.params.targets == "gelu" else "no quantized Linear or Conv2d layer with an input quantizer")
            hint = "use targets=all to add the noisy bias to every Linear/Conv2d input" \
                if self.params.targets == "gelu" else "choose a scope that quantizes Linear/Conv2d inputs"
            raise ConfigError(f"noisyquant targets={self.params.targets}: {type(qmodel).__name__} has {what}; {hint}")
        no_bias = [t.layer_name for t in found if t.layer.bias is None]
        if no_bias:
            raise ConfigError(f"noisyquant: layer {no_bias[0]} has no bias to absorb the noisy bias (W N); "
                              f"NoisyQuant needs a bias on every target layer ({len(no_bias)} lack one)")
        return found

    @torch.no_grad()
    def _add_noise(self, qmodel: nn.Module, targets: list[Target], generator: torch.Generator) -> None:
        for t in targets:
            old = qmodel.get_submodule(t.quantizer_name)
            step = float((old.upper - old.lower).detach().max()) / old.levels
            noise = (torch.rand(t.channels, generator=generator, dtype=torch.float64) - 0.5) \
                * (self.params.amplitude * step)
            new = make_quantizer(NoisyFakeQuantizer.quant_type, old)
            new.set_bounds(old.lower.detach(), old.upper.detach())  # recalibrated on x + N below
            new.set_noise(noise.float(), t.axis)
            replace_quantizer(qmodel, t.quantizer_name, new)
            bias = t.layer.bias.detach().double() - noise_response(t.layer, new.noise)
            rewrite_fp_tensor(qmodel, f"{t.layer_name}.bias", bias)
            self.noised[t.quantizer_name] = step

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        base = self.base_method()
        targets = self._targets(qmodel)          # refuse before any work
        base.calibrate(qmodel, ctx)
        self.noised = {}
        generator = torch.Generator().manual_seed(self.params.seed)
        self._add_noise(qmodel, targets, generator)
        names = {t.quantizer_name for t in targets}

        def recalibrate(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            if name in names:  # x is x + N here: the noisy quantizer adds it before observing
                q.set_bounds(*base.range(x, q))

        capture_activations(qmodel, ctx.require_batch(), recalibrate)
