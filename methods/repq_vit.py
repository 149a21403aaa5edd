"""RepQ-ViT (Li et al., ICCV 2023, arXiv 2212.08254): scale reparameterisation for post-LayerNorm activations and
a log-sqrt2 quantizer for the attention map.

What it does here, in order:
  1. Finds which LayerNorm feeds which quantized linear with the core's forward probe
     (`bench.quant.feeds.norm_feeds`: a permutation-invariant fingerprint per channel, no architecture names).
     In the `2dquant` scope SwinIR's qkv is split into q, k and v, each with its own input quantizer on the same
     LayerNorm output: the three form one group and get one fold.
  2. Calibrates every activation quantizer on the calibration batch (one FP forward):
       * post-LayerNorm inputs: per-channel bounds (l_c, u_c), each channel by the rule below;
       * the post-softmax map (kind act_softmax): swapped for a `log-sqrt2` quantizer (`bench.quant.log_quantizer`)
         whose scale s is the candidate quantile that minimises ||v - Q(v)||^2;
       * every other activation: per-tensor bounds by the rule below.
     The rule (RepQ-ViT's released code): candidates (l, u) = the (1 - p, p) quantiles for p in 0.999, 0.9999,
     0.99999 (and 1: min/max, so the full range is always a candidate), keep the smallest ||v - Q(v)||^2,
     computed exactly on the sorted tensor (bench.quant.range_search).
  3. Reparameterises each group into per-tensor quantization (paper §4.2). With s_c = (u_c - l_c) / N the
     per-channel steps, the per-tensor target s = mean(s_c) and l = mean(l_c), r_c = s_c / s, b_c = l_c / r_c - l:
         LayerNorm:            gamma' = gamma / r,     beta' = beta / r - b       (its output becomes x / r - b)
         each linear it feeds: W' = W diag(r),         bias' = bias + W' b        (so W' x' + bias' = W x + bias)
     and the group's input quantizers become per-tensor (l, l + N s). Channel c of x' then has exactly the range
     and step the per-channel quantizer gave channel c of x. The rewrites go through
     `bench.quant.surgery.rewrite_fp_tensor` (the quantized copy only; saved with it), and an FP forward of the
     rewritten copy must equal the FP model's (`fold_check`) or the method stops: a LayerNorm whose output also
     reaches something other than the folded linears cannot be folded.
  4. Weights, after the fold (the paper re-calibrates them on the rewritten W'): the same percentile rule, per
     output channel when the quantization config is per-channel (the paper's choice: `--per-channel-weights`),
     per tensor otherwise (the `2dquant` scope's default, so that the table compares one placement).
Where it departs from the paper: the log-sqrt2 quantizer has 2^b - 1 powers and zero (b bits; see
bench/quant/log_quantizer.py), and the per-channel floor below.

Paper / official code / this project (zkkli/RepQ-ViT, issue 26): gamma' and W' of the LayerNorm fold equal the
official ones. beta' and bias' differ (by up to 1.46): the official code folds with the mean of the integer
per-channel zero points (non-integer, e.g. 8.65), this project with the mean real lower bound (the paper's
formula). The per-channel calibration picks the official percentile for 90 % of the channels at 4 bits but only
38 % at 6 bits, because this project adds a min/max candidate, scores a real-valued lower bound and floors the
step. The log-sqrt2 quantizer keeps 2^b - 1 powers plus 0 (b bits hold it); the official one 2^b powers plus 0
(one more code than b bits). Together: layer output MSE +0.04 % at 4 bits and +3.6 % at 6 bits against official.

`variant` (recorded): "paper" (default, all of the above) or "code", the released code (zkkli/RepQ-ViT
classification/quant/quantizer.py and test_quant.py):
  * every uniform calibration (per-channel post-LayerNorm inputs, other activations, weights after the fold) takes
    the official candidates only, quantiles p = 0.999, 0.9999, 0.99999 (no min/max), with an integer zero point
    zp = round(-lo / delta), delta = (hi - lo) / (2^b - 1), scored by the official affine quantizer
    (`official_affine_rows`; the two-bound quantizer l = -zp delta, u = (2^b - 1 - zp) delta is that quantizer);
  * the fold with the mean integer zero point (`fold_code`): target_min = -mean(zp) mean(delta);
  * the attention scale: the official candidates scored with the official log-sqrt2 level set
    (`official_log_sqrt2`: 2^b powers plus 0).
  Two things b bits cannot hold are clamped, not emulated: the post-fold quantizer's zero point mean(zp) is not an
  integer (its grid k delta clamped at -mean(zp) delta and (2^b - 1 - mean(zp)) delta has 2^b + 1 values), so it is
  stored rounded; and the deployed log-sqrt2 quantizer keeps 2^b - 1 powers plus 0. Measured on SwinIR-light x2,
  W4A4, 2 calibration patches of 16x16: the rounded zero point raises the squared error of the 96 folded inputs by
  0.77 % over the official non-integer one, the clamped log level set that of the 24 attention maps by 0.06 %.
  End to end, IMDTN x4 (official weights, the reference table's calibration), Set5 PSNR, one process, activations
  and weights swapped between the variants (a one-off measurement script):
      | activations / weights | paper / paper | paper / code | code / paper | code / code |
      | W4A4                  | 28.094        | 28.272       | 28.969       | 29.198      |
      | W2A2                  | 7.692         | 17.842       | 7.730        | 18.473      |
  The code variant is +1.10 dB at W4A4 (mostly its activation calibration and fold) and avoids the paper variant's
  W2A2 collapse, which its weight rule causes: with 4 levels the real-valued percentile bounds leave 0 off the grid,
  the integer zero point keeps it on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.feeds import norm_feeds
from bench.quant.layers import QuantLinear
from bench.quant.log_quantizer import LogQuantizer, log_quantize_values
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.quantizer import ACT_SOFTMAX, FakeQuantizer, levels
from bench.quant.range_search import cached_sorted_view, quantile_linear, sorted_view, two_bound_errors
from bench.quant.surgery import quantizers, rewrite_fp_tensor, set_quant_enabled
from methods.base import PTQMethod, set_weight_bounds
from methods.registry import register_method
from methods.transformer_ops import model_label

PERCENTILES = (0.999, 0.9999, 0.99999, 1.0)
# A channel whose range is (nearly) constant would give r_c ~ 0 and blow up gamma / r: its step is floored
# at this fraction of the mean step (its values then sit on a few levels of the shared per-tensor grid).
_MIN_STEP_FRACTION = 1e-3
_LOG_SEARCH_ELEMENTS = 1 << 22  # the log scale's error is evaluated on an evenly strided subsample of this size


@dataclass
class FoldGroup:
    """A LayerNorm and the quantized linears that read its output."""
    norm: str
    linears: list[str]
    lower: torch.Tensor | None = None  # per-channel bounds of the norm's output (float64)
    upper: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------- the rules

def percentile_rows(view, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a sorted view, the (1 - p, p) quantile pair with the smallest exact ||v - Q(v)||^2."""
    lowers = np.array([[quantile_linear(view, 1.0 - p, r) for p in PERCENTILES] for r in range(view.rows)])
    uppers = np.array([[quantile_linear(view, p, r) for p in PERCENTILES] for r in range(view.rows)])
    uppers = np.maximum(uppers, lowers)
    errors = two_bound_errors(view, lowers.astype(np.float32), uppers.astype(np.float32), bits)
    best = np.argmin(errors, axis=1)  # ties: the first, i.e. the tighter clip
    rows = np.arange(view.rows)
    return lowers[rows, best], uppers[rows, best]


def percentile_bounds(x: torch.Tensor, bits: int) -> tuple[float, float]:
    lower, upper = percentile_rows(cached_sorted_view(x), bits)
    return float(lower[0]), float(upper[0])


def percentile_channel_bounds(x: torch.Tensor, bits: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    lower, upper = percentile_rows(sorted_view(x, axis), bits)
    return torch.from_numpy(lower), torch.from_numpy(upper)


def log_scale(x: torch.Tensor, quantizer: LogQuantizer) -> float:
    """The quantile (PERCENTILES) of x whose log quantization has the smallest squared error."""
    flat = x.detach().reshape(-1).float()
    sample = flat[:: max(1, flat.numel() // _LOG_SEARCH_ELEMENTS)]
    n = flat.numel()
    top = torch.topk(flat, min(n, int(np.ceil(n * (1 - PERCENTILES[0]))) + 1)).values  # descending
    candidates = sorted({float(top[min(top.numel() - 1, int((n - 1) * (1 - p)))]) for p in PERCENTILES})
    candidates = [c for c in candidates if c > 0] or [1.0]
    errors = [float((log_quantize_values(sample, torch.tensor(c), quantizer.bits, quantizer.log2_base, False)
                     - sample).double().square().sum()) for c in candidates]
    return candidates[int(np.argmin(errors))]


OFFICIAL_PERCENTILES = (0.999, 0.9999, 0.99999)  # zkkli/RepQ-ViT's candidate set (no min/max candidate)


def official_affine_rows(view, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """RepQ-ViT's released UniformQuantizer calibration, per row of a sorted view: candidates (lo, hi) = the
    (1 - p, p) quantiles (numpy's linear definition, as torch.quantile) for p in OFFICIAL_PERCENTILES, each turned
    into delta = (hi - lo) / (2^b - 1) and an integer zero point zp = round(-lo / delta), scored by
    mean((v - Q(v))^2) with Q(v) = (clamp(round(v / delta) + zp, 0, 2^b - 1) - zp) * delta, the first of the
    smallest kept (strict <). Returns (delta, zp) per row, float64."""
    n = levels(bits)
    deltas, zps = np.zeros(view.rows), np.zeros(view.rows)
    for row in range(view.rows):
        v = torch.from_numpy(np.asarray(view.values[row], dtype=np.float32))
        best = np.inf
        for p in OFFICIAL_PERCENTILES:
            lo = torch.tensor(quantile_linear(view, 1.0 - p, row), dtype=torch.float32)
            hi = torch.tensor(quantile_linear(view, p, row), dtype=torch.float32)
            delta = torch.clamp((hi - lo) / n, min=1e-8)  # a constant row: the step stays positive
            zp = torch.round(-lo / delta)
            q = (torch.clamp(torch.round(v / delta) + zp, 0, n) - zp) * delta
            score = float((v - q).double().square().mean())
            if score < best:
                best, deltas[row], zps[row] = score, float(delta), float(zp)
    return deltas, zps


def affine_bounds(delta, zp, bits: int):
    """The two-bound quantizer equal to the integer-zero-point affine one: l = -zp delta, u = (2^b - 1 - zp) delta."""
    return -zp * delta, (levels(bits) - zp) * delta


def official_affine_bounds(x: torch.Tensor, bits: int) -> tuple[float, float]:
    delta, zp = official_affine_rows(cached_sorted_view(x), bits)
    lower, upper = affine_bounds(delta[0], zp[0], bits)
    return float(lower), float(upper)


def official_affine_channel_bounds(x: torch.Tensor, bits: int, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    delta, zp = official_affine_rows(sorted_view(x, axis), bits)
    lower, upper = affine_bounds(delta, zp, bits)
    return torch.from_numpy(lower), torch.from_numpy(upper)


def official_log_sqrt2(x: torch.Tensor, delta: float, bits: int) -> torch.Tensor:
    """RepQ-ViT's released LogSqrt2Quantizer: k = round(-2 log2(x / delta)); k >= 2^b -> 0; else
    delta * 2^(-ceil(k'/2)) * (1 + (k' mod 2)(sqrt2 - 1)) with k' = clamp(k, 0, 2^b - 1), i.e. delta * sqrt2^(-k'):
    2^b powers plus 0, one value more than b bits hold."""
    k = torch.round(-2 * torch.log2(x / delta))
    zero = k >= 2 ** bits
    k = torch.clamp(k, 0, 2 ** bits - 1)
    out = torch.exp2(-torch.ceil(k / 2)) * ((k % 2) * (2 ** 0.5 - 1) + 1) * delta
    return out.masked_fill(zero, 0.0)


def official_log_scale(x: torch.Tensor, bits: int) -> float:
    """RepQ-ViT's code: the scale is the p quantile of x (p in OFFICIAL_PERCENTILES) whose official log-sqrt2
    quantization has the smallest squared error (on an evenly strided subsample, as `log_scale`)."""
    flat = x.detach().reshape(-1).float()
    sample = flat[:: max(1, flat.numel() // _LOG_SEARCH_ELEMENTS)]
    n = flat.numel()
    top = torch.topk(flat, min(n, int(np.ceil(n * (1 - OFFICIAL_PERCENTILES[0]))) + 1)).values  # descending
    best, scale = np.inf, 1.0
    for p in OFFICIAL_PERCENTILES:  # linear quantile: a[i] + f (a[i + 1] - a[i]), i = floor((n - 1) p); a[i] = top[n-1-i]
        h = (n - 1) * p
        i = int(np.floor(h))
        below, above = top[min(top.numel() - 1, n - 1 - i)], top[max(0, min(top.numel() - 1, n - 2 - i))]
        candidate = float(below) + (h - i) * (float(above) - float(below))
        if candidate <= 0:
            continue
        error = float((official_log_sqrt2(sample, candidate, bits) - sample).double().square().sum())
        if error < best:
            best, scale = error, candidate
    return scale


# ------------------------------------------------------------------------------------------------ the fold

def fold_groups(qmodel: nn.Module, probe: torch.Tensor) -> list[FoldGroup]:
    """LayerNorms (with an affine) that feed quantized linears' inputs, with those linears."""
    groups = []
    for norm, qnames in norm_feeds(qmodel, probe).items():
        module = qmodel.get_submodule(norm)
        if not getattr(module, "elementwise_affine", True) or module.weight is None or module.bias is None:
            continue  # nothing to fold the scales into
        owners = [name.rpartition(".")[0] for name in qnames]
        linears = [o for o, q in zip(owners, qnames) if isinstance(qmodel.get_submodule(o), QuantLinear)
                   and f"{o}.input_quant" == q and qmodel.get_submodule(o).bias is not None]
        if linears and len(linears) == len(qnames):
            groups.append(FoldGroup(norm, linears))
    return groups


def _apply_fold(qmodel: nn.Module, group: FoldGroup, r: torch.Tensor, b: torch.Tensor, lower: float,
                upper: float) -> None:
    """LayerNorm: gamma' = gamma / r, beta' = beta / r - b; each linear: W' = W diag(r), bias' = bias + W' b; the
    group's input quantizers per tensor (lower, upper)."""
    norm = qmodel.get_submodule(group.norm)
    rewrite_fp_tensor(qmodel, f"{group.norm}.weight", norm.weight.double() / r)
    rewrite_fp_tensor(qmodel, f"{group.norm}.bias", norm.bias.double() / r - b)
    for path in group.linears:
        linear = qmodel.get_submodule(path)
        weight = linear.weight.double() * r[None, :]
        rewrite_fp_tensor(qmodel, f"{path}.weight", weight)
        rewrite_fp_tensor(qmodel, f"{path}.bias", linear.bias.double() + weight @ b)
        linear.input_quant.set_bounds(lower, upper)


def _floored(steps: torch.Tensor) -> torch.Tensor:
    return torch.clamp(steps, min=_MIN_STEP_FRACTION * float(steps.mean()))


def reparameterise(qmodel: nn.Module, group: FoldGroup, bits: int) -> None:
    """Fold the group's per-channel scales into its LayerNorm and linears; set the per-tensor bounds (the paper:
    target l = mean of the real lower bounds)."""
    n = levels(bits)
    lower, upper = group.lower.double(), group.upper.double()
    steps = _floored((upper - lower) / n)
    target_step, target_lower = steps.mean(), lower.mean()
    r = steps / target_step
    b = lower / r - target_lower
    _apply_fold(qmodel, group, r, b, float(target_lower), float(target_lower + n * target_step))


def fold_code(delta: torch.Tensor, zp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """RepQ-ViT's released fold from per-channel steps delta_c and integer zero points zp_c: target step mean(delta),
    target zero point mean(zp) (not an integer), act_min_c = -zp_c delta_c, target_min = -mean(zp) mean(delta),
    r = delta / mean(delta), b = act_min / r - target_min. Returns (r, b, target step, target zero point)."""
    target_delta, target_zp = delta.mean(), zp.mean()
    r = delta / target_delta
    b = -zp * delta / r + target_zp * target_delta
    return r, b, float(target_delta), float(target_zp)


def reparameterise_code(qmodel: nn.Module, group: FoldGroup, bits: int) -> float:
    """The released fold (`fold_code`). Its per-tensor quantizer keeps the non-integer mean zero point z, whose grid
    k delta (k integer) clamped at -z delta and (2^b - 1 - z) delta has 2^b + 1 values, one more than b bits hold;
    here the zero point is rounded, round(z), so the quantizer is b-bit. Returns z."""
    n = levels(bits)
    lower, upper = group.lower.double(), group.upper.double()
    delta = _floored((upper - lower) / n)
    zp = torch.round(-lower / delta)  # the calibration's integer zero points (lower = -zp delta)
    r, b, target_delta, target_zp = fold_code(delta, zp)
    stored = round(target_zp)
    _apply_fold(qmodel, group, r, b, -stored * target_delta, (n - stored) * target_delta)
    return target_zp


@torch.no_grad()
def check_fold(qmodel: nn.Module, fp_model: nn.Module, probe: torch.Tensor, tolerance: float) -> float:
    """max |FP(x) - rewritten copy without quantization (x)|; ConfigError beyond tolerance * max(1, max|FP|)."""
    enabled = {name: q.enabled for name, q in quantizers(qmodel)}
    set_quant_enabled(qmodel, False)
    try:
        reference, folded = fp_model(probe), qmodel(probe)
    finally:
        for name, q in quantizers(qmodel):
            q.enabled = enabled[name]
    delta = float((reference - folded).abs().max())
    if delta > tolerance * max(1.0, float(reference.abs().max())):
        raise ConfigError(f"repq-vit: folding the LayerNorm scales changed the FP output by {delta:.3g}: a LayerNorm "
                          f"output reaches layers besides the folded linears; use another method for this model")
    return delta


# ---------------------------------------------------------------------------------------------- the method

@register_method("repq-vit")
class RepQViT(PTQMethod):
    """RepQ-ViT: per-channel post-LayerNorm activations folded into per-tensor, log-sqrt2 attention map (variant=paper|code)."""

    @dataclass(frozen=True)
    class Params:
        attn_quantizer: Literal["log-sqrt2", "log2"] = "log-sqrt2"  # the post-softmax quantizer type
        variant: Literal["paper", "code"] = "paper"  # the paper's fold and rules, or the released code's
        probe_patch: int = 16    # LR crop (pixels) of one calibration patch for the probe and the fold check
        fold_check: float = 1e-4  # allowed FP change of the fold, relative to max(1, max|output|)

        def __post_init__(self) -> None:
            if self.probe_patch < 1:
                raise ValueError(f"probe_patch={self.probe_patch} must be >= 1")
            if not self.fold_check > 0:
                raise ValueError(f"fold_check={self.fold_check} must be > 0")

    def calibrate(self, qmodel: nn.Module, ctx) -> None:
        batch = ctx.require_batch()
        size = self.params.probe_patch
        probe = batch[:1, :, :size, :size]
        groups = fold_groups(qmodel, probe)
        if not groups:
            raise ConfigError(f"repq-vit needs LayerNorm inputs to quantized linears; {model_label(qmodel)} has none "
                              f"(use a transformer such as swinir-light, or another method)")
        self._swap_attention_quantizers(qmodel)
        code = self.params.variant == "code"
        self._calibrate_activations(qmodel, batch, groups)
        self.zero_points = {}  # code: each group's mean integer zero point (stored rounded)
        for group in groups:
            bits = qmodel.get_submodule(group.linears[0]).input_quant.bits
            if code:
                self.zero_points[group.norm] = reparameterise_code(qmodel, group, bits)
            else:
                reparameterise(qmodel, group, bits)
        self.fold_delta = check_fold(qmodel, ctx.fp_model, probe, self.params.fold_check)
        if code:
            set_weight_bounds(qmodel, lambda w, q: official_affine_bounds(w, q.bits),
                              channel_rule=lambda w, q: official_affine_channel_bounds(w, q.bits, q.per_channel_axis))
        else:
            set_weight_bounds(qmodel, lambda w, q: percentile_bounds(w, q.bits),
                              channel_rule=lambda w, q: percentile_channel_bounds(w, q.bits, q.per_channel_axis))
        self.groups = groups
        self.folded = {g.norm: g.linears for g in groups}

    def describe(self) -> dict:
        record = super().describe()
        if getattr(self, "zero_points", None):  # code: the released fold's non-integer zero points, stored rounded
            record["fold_zero_points"] = {norm: round(z, 4) for norm, z in self.zero_points.items()}
        return record

    def _swap_attention_quantizers(self, qmodel: nn.Module) -> None:
        for name, q in quantizers(qmodel):
            if q.kind == ACT_SOFTMAX and q.quant_type == "uniform":
                replace_quantizer(qmodel, name, make_quantizer(self.params.attn_quantizer, q))

    def _calibrate_activations(self, qmodel: nn.Module, batch: torch.Tensor, groups: list[FoldGroup]) -> None:
        group_of = {f"{path}.input_quant": g for g in groups for path in g.linears}

        code = self.params.variant == "code"
        channel_rule = official_affine_channel_bounds if code else percentile_channel_bounds
        tensor_rule = official_affine_bounds if code else percentile_bounds

        def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            group = group_of.get(name)
            if group is not None:
                if group.lower is None:  # q, k and v read the same tensor: one per-channel calibration
                    group.lower, group.upper = channel_rule(x, q.bits, axis=-1)
            elif isinstance(q, LogQuantizer):
                code_scale = code and self.params.attn_quantizer == "log-sqrt2" and not q.signed
                q.set_scale(official_log_scale(x, q.bits) if code_scale else log_scale(x, q))
            else:
                q.set_bounds(*tensor_rule(x, q.bits))

        capture_activations(qmodel, batch, observe)
