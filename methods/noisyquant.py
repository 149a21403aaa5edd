"""NoisyQuant (Liu et al., CVPR 2023, arXiv 2211.16056): a noisy bias before activation quantization.

For each target activation x (the input of a Linear or Conv2d layer with weight W and bias b) the layer computes
W Q(x + N) + b - W N: the quantizer becomes the core's `noisy` type (adds a fixed per-channel N before rounding,
bench/quant/noisy.py) and the bias is rewritten to b - W N (`rewrite_fp_tensor`, saved with the file), so with
the quantizers off the layer is the FP layer. Bounds of every quantizer come first from a registered range rule
(`base`, default DOBI) on the FP tensors. Two ways to choose N (`noise`):

`noise="searched"` (default), as the authors' code runs it (kriskrisliu/NoisyQuant `fast_quant.py`, and the first
author's PTQ4ViT fork kriskrisliu/PTQ4ViT_noisy `example/quant_test_all.py`): per target layer,
N = o + r * u with u ~ U(-1, 1) one value per input channel (drawn once, seeded), searched on the layer's output
error over its calibration input x (the FP model's input to the layer, `rows` rows sampled):
  1. the offset o on a grid of `resolution` steps in [-max_offset, +max_offset] quantization steps, with r = 0;
  2. the range r on a grid of `resolution` steps in [0, max_range] steps, at the chosen o;
  3. the result against today's `fixed` noise on that layer (the same draw as noise="fixed", its bounds
     recalibrated on x + N as there); the smallest error wins, ties keep the simpler choice.
Both grids contain 0, so "no noise" is a candidate and the choice is never worse than no noise, nor than `fixed`,
on the searched rows. The error is mean((W_q Q(x + N) + b - W N) - (W x + b))^2: the deployed layer (quantized
weight, bias correction with the FP weight) against the FP layer. The activation bounds stay the base rule's on
x (the codes keep their activation scale while searching). Targets (`targets="auto"` -> "linear"): the input of
every quantized Linear, as both official codes (fast_quant.py wraps every nn.Linear but the classifier head;
the fork's per-layer tables list every qkv, proj, fc1, fc2 and the head).

`noise="fixed"` (the project's earlier reading of the paper, kept as an option): N ~ U(-K/2, K/2) per channel,
K = `amplitude` * s with s the quantizer's step from the base rule, on the post-GELU fc2 inputs
(`targets="auto"` -> "gelu", the paper's pipeline figure), then the target bounds are recalibrated with the base
rule on x + N.

`targets="all"` adds every quantized Conv2d input, which is how the method applies to CNNs. Batch-matmul operands
(attention) have no bias to absorb W N and are never targets. Convolutions: b - W N with W summed over the kernel
cancels the noise exactly where the whole kernel window lies inside the image; with zero padding the border
outputs keep part of the noise (the searched error includes that). Linear layers cancel it exactly everywhere.

Paper / official code / this project (issue 26; the bias correction b - W N equals the official one to 7e-7):
  * the paper: a fixed uniform noisy bias, its range chosen per layer; the codes search range and offset per
    layer against the layer's output MSE. `searched` follows the codes. Differences from them: the codes search
    layer by layer on the quantized model's inputs, here on the FP inputs (the project's calibration protocol);
    their error target is the quantized-weight layer on the unquantized input (W_q x + b), here the FP layer
    (W x + b), so the offset may also absorb the weight error's mean; fast_quant.py draws its pattern as
    (randn * 2 - 1) (a Gaussian, though its paper says uniform), the fork as U(-1, 1) (used here); grids of
    0.05 steps (the codes: 0.005-0.01 offset, 0.001-0.01 range) and at most 4096 rows (the codes: every row).
  * measured (issue 26): on one post-GELU linear at 4 bits the fixed noise raised the output MSE by 81 % over no
    noise, the searched noise lowered it by 7 %. Shipped SwinIR-light x2, W4A4, DOBI, 2 calibration patches of
    16x16 (tests/test_noisyquant.py): over its 144 Linears the calibration output MSE is, geometric mean against
    no noise, -5.6 % searched and +1.1 % fixed (the 24 fc2 alone: -4.6 % and +1.8 %; fixed at worst +20 %);
    the search picks o + r u on 131 layers, the fixed draw on 7 and no noise on 6, and every layer is at or below
    both no noise and fixed. End to end, IMDTN x4 (official weights, the reference table's protocol, Set5, one
    thread): W4A4 26.70 dB / SSIM 0.6499 searched vs 26.66 / 0.6439 fixed (results/reference/imdtn-w4a4.md);
    W2A2 20.70 / 0.3335 vs 20.76 / 0.3414 (36 Linears: 30 or 32 searched, 5 or 2 fixed, 1 or 2 none). Each
    layer's error is lowered on FP inputs, one layer at a time, so the network's PSNR is not bound to follow:
    +0.04 dB at W4A4, -0.06 dB at W2A2.
    Calibration time there: 214 s / 119 s searched (CPU shared with other jobs) vs 30 s fixed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.noisy import NoisyFakeQuantizer
from bench.quant.pipeline import CalibContext
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.quantizer import ACT_GELU, FakeQuantizer, fake_quantize_inference
from bench.quant.surgery import rewrite_fp_tensor
from methods.base import PTQMethod, RangeRuleMethod
from methods.registry import create_method, register_method

TargetSet = Literal["linear", "gelu", "all"]


@dataclass(frozen=True)
class Target:
    """One activation quantizer that gets a noisy bias, and the layer whose bias absorbs it."""
    quantizer_name: str          # path of the input quantizer, from bench.quant.quantizers()
    layer_name: str              # path of the Linear/Conv2d that owns it
    layer: nn.Module
    axis: int                    # channel axis of the layer's input: -1 (Linear), 1 (Conv2d, NCHW)
    channels: int


def find_targets(qmodel: nn.Module, targets: TargetSet) -> list[Target]:
    """Input quantizers of quantized layers: every Linear ("linear"), the post-GELU ones ("gelu"), or every Linear
    and Conv2d ("all")."""
    found = []
    for path, module in qmodel.named_modules():
        q = getattr(module, "input_quant", None)
        if not isinstance(q, FakeQuantizer) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        linear = isinstance(module, nn.Linear)
        if (targets == "gelu" and q.kind != ACT_GELU) or (targets == "linear" and not linear):
            continue
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


def corrected_bias(layer: nn.Module, noise: torch.Tensor) -> torch.Tensor:
    """b - W N in float64, from the float32 noise the quantizer holds (the deployed numbers)."""
    return layer.bias.detach().double() - noise_response(layer, noise.float())


def _layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


# ------------------------------------------------------------------------------------------ the search

@dataclass
class LayerProbe:
    """A target layer on its calibration rows: the FP output and the quantized weight, to score a noise N."""
    layer: nn.Module
    x: torch.Tensor              # calibration input: (rows, C) for a Linear, (B, C, H, W) for a Conv2d
    axis: int
    weight_q: torch.Tensor
    fp_out: torch.Tensor

    @classmethod
    @torch.no_grad()
    def build(cls, layer: nn.Module, x: torch.Tensor, axis: int, rows: int, generator: torch.Generator) -> LayerProbe:
        if axis == -1:  # a Linear treats rows independently: sample `rows` of them (0: all)
            x = x.reshape(-1, x.shape[-1])
            if 0 < rows < x.shape[0]:
                x = x[torch.randperm(x.shape[0], generator=generator)[:rows].sort().values]
        weight = layer.weight.detach()
        q = layer.weight_quant
        weight_q = fake_quantize_inference(weight, q._broadcast(q.lower.detach(), weight),
                                           q._broadcast(q.upper.detach(), weight), q.bits)
        bias = layer.bias.detach()
        return cls(layer, x, axis, weight_q, _layer_output(layer, x, weight, bias))

    @torch.no_grad()
    def error(self, noise: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> float:
        """Mean squared output error of the deployed layer with input noise N and activation bounds (l, u)."""
        shape = [1] * self.x.dim()
        shape[self.axis] = -1
        noise = noise.float()
        xq = fake_quantize_inference(self.x + noise.view(shape), lower, upper, bits)
        out = _layer_output(self.layer, xq, self.weight_q, corrected_bias(self.layer, noise).float())
        return float((out - self.fp_out).pow(2).mean())


@dataclass
class NoiseChoice:
    """What the search chose for one target: "none", "searched" (o + r u) or "fixed" (today's draw and bounds)."""
    choice: Literal["none", "searched", "fixed"]
    offset_steps: float
    range_steps: float
    noise: torch.Tensor                       # float64, one value per channel (zeros for "none")
    bounds: tuple[torch.Tensor, torch.Tensor]
    mse: dict[str, float] = field(default_factory=dict)   # none / searched / fixed on the searched rows


def _grid(limit: float, resolution: float, symmetric: bool) -> list[float]:
    n = int(round(limit / resolution))
    return [round(k * resolution, 10) for k in range(-n if symmetric else 0, n + 1)]


def search_noise(probe: LayerProbe, q: FakeQuantizer, unit: torch.Tensor, step: float, fixed: NoiseChoice,
                 max_offset: float, max_range: float, resolution: float) -> NoiseChoice:
    """The official two-stage search (offset at r = 0, then range at that offset) against `fixed`."""
    lower, upper = q.lower.detach(), q.upper.detach()
    zero = torch.zeros_like(unit)
    none_mse = probe.error(zero, lower, upper, q.bits)
    best_o, best = 0.0, none_mse
    for o in _grid(max_offset, resolution, symmetric=True):
        if o != 0.0 and (e := probe.error(zero + o * step, lower, upper, q.bits)) < best:
            best_o, best = o, e
    best_r = 0.0
    for r in _grid(max_range, resolution, symmetric=False):
        if r != 0.0 and (e := probe.error(best_o * step + r * step * unit, lower, upper, q.bits)) < best:
            best_r, best = r, e
    fixed_mse = probe.error(fixed.noise, *fixed.bounds, q.bits)
    mse = {"none": none_mse, "searched": best, "fixed": fixed_mse}
    if fixed_mse < best:
        return NoiseChoice("fixed", fixed.offset_steps, fixed.range_steps, fixed.noise, fixed.bounds, mse)
    if best_o == 0.0 and best_r == 0.0:
        return NoiseChoice("none", 0.0, 0.0, zero, (lower.clone(), upper.clone()), mse)
    return NoiseChoice("searched", best_o, best_r, best_o * step + best_r * step * unit, (lower.clone(), upper.clone()),
                       mse)


# ------------------------------------------------------------------------------------------ the method

@register_method("noisyquant")
class NoisyQuant(PTQMethod):
    """NoisyQuant: per-layer searched noisy bias (range and offset, as its code) on Linear inputs, removed via the bias."""

    @dataclass(frozen=True)
    class Params:
        base: str = "dobi"                       # registered range-rule method for all bounds
        noise: Literal["searched", "fixed"] = "searched"  # official per-layer search, or U(-K/2, K/2) fixed
        targets: Literal["auto", "linear", "gelu", "all"] = "auto"  # auto: linear (searched) / gelu (fixed)
        amplitude: float = 1.0                   # fixed: K = amplitude * step, N ~ U(-K/2, K/2)
        seed: int = 0                            # the noise pattern (and the searched rows) come from this seed
        max_offset: float = 1.5                  # searched: offset grid in [-max_offset, max_offset] steps
        max_range: float = 2.0                   # searched: half-width r of o + r U(-1, 1) in [0, max_range] steps
        resolution: float = 0.05                 # searched: grid spacing, in steps
        rows: int = 4096                         # searched: calibration rows per Linear scored (0: all)

        def __post_init__(self) -> None:
            if not self.amplitude > 0:
                raise ValueError(f"amplitude={self.amplitude} must be > 0 (noise range in quantization steps)")
            if self.max_offset < 0 or self.max_range < 0:
                raise ValueError(f"max_offset={self.max_offset}, max_range={self.max_range} must be >= 0 (steps)")
            if not self.resolution > 0:
                raise ValueError(f"resolution={self.resolution} must be > 0 steps")
            if self.rows < 0:
                raise ValueError(f"rows={self.rows} must be >= 0 (0 scores every calibration row)")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.noised: dict[str, float] = {}      # quantizer name -> the step s its noise was drawn from
        self.choices: dict[str, NoiseChoice] = {}

    def target_set(self) -> TargetSet:
        if self.params.targets != "auto":
            return self.params.targets
        return "linear" if self.params.noise == "searched" else "gelu"

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
        record["noised"] = {"noise": self.params.noise, "targets": self.target_set(), "quantizers": len(self.noised),
                            "steps": dict(self.noised)}
        if self.choices:
            record["noised"]["choices"] = {kind: sum(c.choice == kind for c in self.choices.values())
                                           for kind in ("none", "searched", "fixed")}
            record["noised"]["search"] = {
                name: {"choice": c.choice, "offset_steps": c.offset_steps, "range_steps": c.range_steps,
                       "mse": {k: float(f"{v:.6g}") for k, v in c.mse.items()}}
                for name, c in self.choices.items()}
        return record

    def _targets(self, qmodel: nn.Module) -> list[Target]:
        targets = self.target_set()
        found = find_targets(qmodel, targets)
        if not found:
            what = {"gelu": "no post-GELU activation quantizer (kind act_gelu) at the input of a quantized Linear/Conv2d",
                    "linear": "no quantized Linear layer with an input quantizer",
                    "all": "no quantized Linear or Conv2d layer with an input quantizer"}[targets]
            hint = "use targets=all to add the noisy bias to every Linear/Conv2d input" \
                if targets != "all" else "choose a scope that quantizes Linear/Conv2d inputs"
            raise ConfigError(f"noisyquant targets={targets}: {type(qmodel).__name__} has {what}; {hint}")
        no_bias = [t.layer_name for t in found if t.layer.bias is None]
        if no_bias:
            raise ConfigError(f"noisyquant: layer {no_bias[0]} has no bias to absorb the noisy bias (W N); "
                              f"NoisyQuant needs a bias on every target layer ({len(no_bias)} lack one)")
        return found

    @torch.no_grad()
    def _install(self, qmodel: nn.Module, t: Target, noise: torch.Tensor, bounds: tuple[torch.Tensor, torch.Tensor],
                 step: float) -> NoisyFakeQuantizer:
        old = qmodel.get_submodule(t.quantizer_name)
        new = make_quantizer(NoisyFakeQuantizer.quant_type, old)
        new.set_bounds(*bounds)
        new.set_noise(noise.float(), t.axis)
        replace_quantizer(qmodel, t.quantizer_name, new)
        rewrite_fp_tensor(qmodel, f"{t.layer_name}.bias", corrected_bias(t.layer, new.noise))
        self.noised[t.quantizer_name] = step
        return new

    @staticmethod
    def _step(q: FakeQuantizer) -> float:
        return float((q.upper - q.lower).detach().max()) / q.levels

    def _draw(self, targets: list[Target]) -> dict[str, torch.Tensor]:
        """One uniform draw in [0, 1) per channel of each target, in target order, from `seed` (the fixed noise is
        (draw - 0.5) * K; the searched pattern u = 2 (draw - 0.5))."""
        generator = torch.Generator().manual_seed(self.params.seed)
        return {t.quantizer_name: torch.rand(t.channels, generator=generator, dtype=torch.float64) for t in targets}

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        base = self.base_method()
        targets = self._targets(qmodel)          # refuse before any work
        base.calibrate(qmodel, ctx)
        self.noised, self.choices = {}, {}
        draws = self._draw(targets)
        if self.params.noise == "fixed":
            self._calibrate_fixed(qmodel, ctx, base, targets, draws)
        else:
            self._calibrate_searched(qmodel, ctx, base, targets, draws)

    def _fixed_noise(self, draw: torch.Tensor, step: float) -> torch.Tensor:
        return (draw - 0.5) * (self.params.amplitude * step)

    def _calibrate_fixed(self, qmodel: nn.Module, ctx: CalibContext, base: RangeRuleMethod, targets: list[Target],
                         draws: dict[str, torch.Tensor]) -> None:
        for t in targets:
            old = qmodel.get_submodule(t.quantizer_name)
            step = self._step(old)
            self._install(qmodel, t, self._fixed_noise(draws[t.quantizer_name], step), old.bounds(), step)
        names = {t.quantizer_name for t in targets}

        def recalibrate(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            if name in names:  # x is x + N here: the noisy quantizer adds it before observing
                q.set_bounds(*base.range(x, q))

        capture_activations(qmodel, ctx.require_batch(), recalibrate)

    def _calibrate_searched(self, qmodel: nn.Module, ctx: CalibContext, base: RangeRuleMethod, targets: list[Target],
                            draws: dict[str, torch.Tensor]) -> None:
        p = self.params
        by_name = {t.quantizer_name: t for t in targets}
        rows = torch.Generator().manual_seed(p.seed)
        steps: dict[str, float] = {}

        def search(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            t = by_name.get(name)
            if t is None:
                return
            step = steps[name] = self._step(q)
            fixed_noise = self._fixed_noise(draws[name], step)
            shape = [1] * x.dim()
            shape[t.axis] = -1
            scratch = make_quantizer("uniform", q)  # today's `fixed` bounds: the base rule on x + N
            scratch.set_bounds(*base.range(x + fixed_noise.float().view(shape), q))
            fixed = NoiseChoice("fixed", 0.0, p.amplitude / 2, fixed_noise, scratch.bounds())
            probe = LayerProbe.build(t.layer, x, t.axis, p.rows, rows)
            self.choices[name] = search_noise(probe, q, 2 * (draws[name] - 0.5), step, fixed, p.max_offset,
                                              p.max_range, p.resolution)

        capture_activations(qmodel, ctx.require_batch(), search)
        for t in targets:
            c = self.choices[t.quantizer_name]
            if c.choice != "none":
                self._install(qmodel, t, c.noise, c.bounds, steps[t.quantizer_name])
