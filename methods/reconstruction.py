"""Reconstruction PTQ machinery shared by AdaRound, BRECQ and QDrop (knows no architecture, no runner).

Pieces:
  * `reconstruction_units(model)`: the model's `reconstruction_units()` hook, else its `feature_modules()`
    (models/ decides what a block is: SwinIR's Swin blocks, IMDN's IMDBs, the CNNs' main blocks);
  * `plan_units(qmodel, blockwise)`: the units in forward order. Blockwise: the model's units, plus every quantized
    layer outside all of them (first conv, upsampler, ...) as a unit of its own; layer-wise: every quantized layer;
  * `UnitData`: a unit's cached tensors on the calibration batch: the FP model's input and output of the unit, and
    the quantized model's input to it (previous units already reconstructed), as AdaRound (asymmetric
    reconstruction), BRECQ and QDrop prescribe; optionally the squared-gradient weights of BRECQ's Fisher loss;
  * `reconstruct_unit`: one unit's optimisation: AdaRound's soft rounding V of every weight (Adam), optionally
    the unit's activation bounds (Adam + cosine, BRECQ/QDrop's LSQ steps), QDrop's element-wise drop of activation
    quantization (`keep`: the official drop_prob, the probability of keeping the quantized value), the rounding
    regulariser with annealed beta; then the rounding is hardened;
  * `Reconstruction.run(qmodel, ctx)`: bounds from an initial registered method, weight quantizers swapped for the
    core's learned-rounding type, then every unit in order (one tqdm bar, seeded, on ctx.device).

Loss (BRECQ/QDrop's `lp_loss`, p = 2): the squared error summed over the channel dimension, averaged over the rest
(batch and positions); channels are dim 1 of a 4-D feature map and the last dim of (B, L, C) tokens. The rounding
regulariser is lam * sum(1 - |2 h(V) - 1|^beta) over the unit's weights, off during the first `warmup` fraction of
the iterations, then beta decays linearly from beta_start to beta_end (AdaRound §4.2, BRECQ's LinearTempDecay).
Iterations are counted from 1 as in the official code (yhhhli/BRECQ, wimh966/QDrop: the loss counter is incremented
before use), so beta reaches exactly beta_end on the last iteration (counted from 0 it ended at 2.11 after 200
iterations, and the warm-up was one iteration longer). Measured on IMDN x2 `IMDB1.c2` (W4A4, DOBI bounds, 32
patches of 48 px, 200 iterations, lr 1e-3, same seed): the hardened rounding is 100 % identical under both
schedules and the layer loss is 22.1602 in both: the fix aligns the schedule, it does not move results.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from tqdm import tqdm

from bench.errors import ConfigError
from bench.quant.integer_grid import uniform_grid_bounds
from bench.quant.layers import QUANT_LAYER_TYPES
from bench.quant.pipeline import CalibContext
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.quantizer import FakeQuantizer
from bench.quant.rounding import LearnedRoundingQuantizer
from bench.quant.surgery import activation_quantizers, weight_quantizers
from methods.base import PTQMethod
from methods.finetune import feature_modules, only_training, seed_everything
from methods.registry import create_method

LossKind = Literal["mse", "fisher"]


# ------------------------------------------------------------------------------------------------ units

def reconstruction_units(model: nn.Module) -> list[nn.Module]:
    """`model.reconstruction_units()` if the model has the hook, else its `feature_modules()` ([] if neither)."""
    getter = getattr(model, "reconstruction_units", None)
    return list(getter()) if callable(getter) else feature_modules(model)


@dataclass
class Unit:
    name: str          # module path in the quantized model
    module: nn.Module
    blockwise: bool    # a model block (True) or a single quantized layer (False)


def _topmost_quant_layers(model: nn.Module, inside: set[int]) -> list[tuple[str, nn.Module]]:
    found, covered = [], set(inside)
    for name, module in model.named_modules():
        if id(module) in covered:
            covered.update(id(m) for m in module.modules())
            continue
        if isinstance(module, QUANT_LAYER_TYPES):
            found.append((name, module))
            covered.update(id(m) for m in module.modules())
    return found


def _forward_order(model: nn.Module, modules: list[nn.Module], probe: torch.Tensor) -> list[int]:
    """Indices of `modules` sorted by their first call in one forward of `probe` (never-called ones dropped)."""
    order: list[int] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, i=i: None if i in order else order.append(i))
               for i, m in enumerate(modules)]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    return order


def plan_units(qmodel: nn.Module, probe: torch.Tensor, blockwise: bool) -> list[Unit]:
    """Units to reconstruct, in forward order; every quantized layer belongs to exactly one unit."""
    path = {id(m): n for n, m in qmodel.named_modules()}
    blocks = reconstruction_units(qmodel) if blockwise else []
    inside = {id(m) for b in blocks for m in b.modules()}
    units = [Unit(path[id(b)], b, True) for b in blocks]
    units += [Unit(n, m, False) for n, m in _topmost_quant_layers(qmodel, inside)]
    units = [u for u in units if any(isinstance(m, QUANT_LAYER_TYPES) for m in u.module.modules())]
    return [units[i] for i in _forward_order(qmodel, [u.module for u in units], probe)]


# ------------------------------------------------------------------------------------------------ caching

class _Stop(Exception):
    """Raised by a hook to end a forward pass once the unit's tensors are captured."""


@dataclass
class UnitInput:
    """A unit's call: positional args and kwargs; tensors whose first dim is `batch` (the unit's rows) are sliced
    per step."""
    args: tuple
    kwargs: dict
    batch: int

    def select(self, idx: torch.Tensor | None, other: UnitInput | None = None, keep: float = 1.0
               ) -> tuple[tuple, dict]:
        """The call on samples `idx` (all if None); with `other` and keep < 1, each element of a batched tensor
        stays this input's with probability `keep` and comes from `other` otherwise (QDrop's mix of quantized and
        FP inputs, drawn as its code draws it: where(rand < drop_prob, quantized, fp))."""
        def pick(i: int | str, v: Any) -> Any:
            if not (isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == self.batch):
                return v
            v = v if idx is None else v[idx]
            if other is not None and keep < 1:
                alt = other.args[i] if isinstance(i, int) else other.kwargs[i]
                alt = alt if idx is None else alt[idx]
                v = torch.where(torch.rand_like(v) < keep, v, alt)
            return v
        return (tuple(pick(i, a) for i, a in enumerate(self.args)),
                {k: pick(k, v) for k, v in self.kwargs.items()})


def _output_tensor(out: Any, name: str) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"reconstruction unit {name} returns {type(out).__name__}, not a tensor; expose units "
                          f"whose output is a feature tensor (models' reconstruction_units())")
    return out


def _detach(v: Any) -> Any:
    return v.detach() if isinstance(v, torch.Tensor) else v


@torch.no_grad()
def capture_unit(model: nn.Module, unit: nn.Module, batch: torch.Tensor, with_output: bool
                 ) -> tuple[UnitInput, torch.Tensor | None]:
    """The input (and output) of `unit` in a forward of `model` on `batch` (first call; the rest is skipped)."""
    seen: dict[str, Any] = {}

    def pre(_m, args, kwargs):
        seen["input"] = UnitInput(tuple(_detach(a) for a in args), {k: _detach(v) for k, v in kwargs.items()},
                                  batch.shape[0])
        if not with_output:
            raise _Stop

    def post(_m, _args, _kwargs, out):
        seen["output"] = _output_tensor(out, type(unit).__name__).detach()
        raise _Stop

    handles = [unit.register_forward_pre_hook(pre, with_kwargs=True)]
    if with_output:
        handles.append(unit.register_forward_hook(post, with_kwargs=True))
    try:
        model(batch)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if "input" not in seen:
        raise ConfigError(f"reconstruction unit {type(unit).__name__} is never called by {type(model).__name__}")
    return seen["input"], seen.get("output")


def output_gradient(qmodel: nn.Module, unit: nn.Module, later: list[nn.Module], batch: torch.Tensor,
                    target: torch.Tensor) -> torch.Tensor:
    """|d loss / d unit output| + 1, BRECQ's diagonal-Fisher weights (its code): the model quantized up to and
    including the unit, the `later` units in FP, loss = sum ||Q(x) - FP(x)||^2 / N (the SR counterpart of its
    KL divergence between quantized and FP logits)."""
    seen: dict[str, torch.Tensor] = {}
    later_quantizers = [q for m in later for q in m.modules() if isinstance(q, FakeQuantizer) and q.enabled]

    def post(_m, _args, out):
        out = _output_tensor(out, type(unit).__name__)
        out.retain_grad()
        seen["out"] = out

    handle = unit.register_forward_hook(post)
    for q in later_quantizers:
        q.enabled = False
    try:
        with only_training(qmodel, []), torch.enable_grad():
            # a leaf that needs grad makes the whole graph differentiable while every parameter stays frozen
            x = batch.clone().requires_grad_(True)
            loss = (qmodel(x) - target).pow(2).sum() / batch.shape[0]
            loss.backward()
    finally:
        handle.remove()
        for q in later_quantizers:
            q.enabled = True
    return seen["out"].grad.detach().abs() + 1.0


# ------------------------------------------------------------------------------------------------ loss

def _channel_dim(t: torch.Tensor) -> int:
    # NCHW feature maps: channels are dim 1; (B, L, C) tokens and (B, C) vectors: the last dim
    return 1 if t.dim() == 4 else t.dim() - 1


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """sum over channels of (pred - target)^2 (times weight^2 for the Fisher loss), mean over the rest."""
    err = (pred - target).pow(2)
    if weight is not None:
        err = err * weight.pow(2)
    return err.sum(_channel_dim(err)).mean()


def rounding_regulariser(hs: list[torch.Tensor], beta: float) -> torch.Tensor:
    """sum(1 - |2h - 1|^beta): 0 when every h is 0 or 1."""
    return sum((1 - (2 * h - 1).abs().pow(beta)).sum() for h in hs)


def beta_at(count: int, iters: int, warmup: float, start: float, end: float) -> float | None:
    """beta of iteration `count`, counted from 1 as the official code counts (BRECQ's and QDrop's LossFunction
    increments its counter before it asks LinearTempDecay); None during the warm-up (count < warmup * iters: no
    regulariser), then linear decay from `start` at count = warmup * iters to exactly `end` at count = iters."""
    begin = warmup * iters
    if count < begin:
        return None
    rel = (count - begin) / max(iters - begin, 1)
    return end + (start - end) * max(0.0, 1.0 - rel)


# ------------------------------------------------------------------------------------------------ one unit

@dataclass(frozen=True)
class ReconConfig:
    """Hyper-parameters of one unit's optimisation (the methods' Params map onto it)."""
    iters: int = 20000
    batch: int = 32
    lam: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    lr_round: float = 1e-3
    lr_act: float = 0.0        # 0: activation bounds stay as initialised (AdaRound)
    keep: float = 1.0          # QDrop: probability that an element keeps its quantized value (official drop_prob)
    loss: LossKind = "mse"


@dataclass
class UnitReport:
    """Reconstruction loss of a unit on the whole cached batch (no regulariser)."""
    name: str
    nearest_before: float   # nearest rounding, initial bounds
    nearest_after: float    # nearest rounding, final bounds (= nearest_before when bounds are not learned)
    learned: float          # hardened learned rounding, final bounds
    soft_fraction_binary: float  # share of h(V) within 0.01 of 0 or 1 before hardening
    iters: int


@contextmanager
def _dropping(acts: list[nn.Module], keep: float) -> Iterator[None]:
    """QDrop: each activation quantizer's output keeps its quantized value with probability `keep`, per element,
    and falls back to its input otherwise (the official mask: where(rand < drop_prob, quantized, fp))."""
    def hook(_m, inputs, out):
        return torch.where(torch.rand_like(out) < keep, out, inputs[0])

    handles = [q.register_forward_hook(hook) for q in acts] if keep < 1 else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _nearest(rounders: list[LearnedRoundingQuantizer]) -> Iterator[None]:
    """Temporarily round to nearest (the same bounds)."""
    saved = [r.round_up for r in rounders]
    for r in rounders:
        r.round_up = None
        r._cached = r._cache_key = None
    try:
        yield
    finally:
        for r, up in zip(rounders, saved):
            r.round_up = up
            r._cached = r._cache_key = None


@torch.no_grad()
def unit_loss(module: nn.Module, data: UnitData, chunk: int = 8) -> float:
    total, n, chunk = 0.0, data.q_in.batch, chunk * data.rows_per_sample
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=data.fp_out.device)
        args, kwargs = data.q_in.select(idx)
        out = _output_tensor(module(*args, **kwargs), "unit")
        weight = None if data.grad is None else data.grad[idx]
        total += float(reconstruction_loss(out, data.fp_out[idx], weight)) * len(idx)
    return total / n


@dataclass
class UnitData:
    """A unit's cached tensors. Their first dim holds rows that the unit treats independently: the samples, or
    `rows_per_sample` rows per sample inside a block (SwinIR's attention layers see windows x samples)."""
    q_in: UnitInput
    fp_in: UnitInput
    fp_out: torch.Tensor
    grad: torch.Tensor | None = None
    rows_per_sample: int = 1


def reconstruct_unit(unit: Unit, data: UnitData, cfg: ReconConfig, generator: torch.Generator,
                     bar: tqdm | None = None) -> UnitReport:
    """Optimise one unit's rounding (and activation bounds when cfg.lr_act > 0), then harden the rounding."""
    module = unit.module
    rounders = [q for _, q, _ in weight_quantizers(module) if isinstance(q, LearnedRoundingQuantizer)]
    acts = [q for _, q in activation_quantizers(module) if q.enabled]
    nearest_before = unit_loss(module, data)
    alphas = [q.init_soft(w) for _, q, w in weight_quantizers(module) if isinstance(q, LearnedRoundingQuantizer)]
    bounds = [p for q in acts for p in (q.lower, q.upper)] if cfg.lr_act > 0 else []
    optimisers: list[torch.optim.Optimizer] = [torch.optim.Adam(alphas, lr=cfg.lr_round)] if alphas else []
    scheduler = None
    if bounds:
        act_opt = torch.optim.Adam(bounds, lr=cfg.lr_act)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(act_opt, T_max=cfg.iters, eta_min=0.0)
        optimisers.append(act_opt)
    n, take = data.q_in.batch, cfg.batch * data.rows_per_sample
    with only_training(module, [*alphas, *bounds]), _dropping(acts, cfg.keep):
        for it in range(cfg.iters if optimisers else 0):
            idx = torch.randperm(n, generator=generator)[:take].to(data.fp_out.device)
            args, kwargs = data.q_in.select(idx, data.fp_in, cfg.keep)
            out = _output_tensor(module(*args, **kwargs), unit.name)
            loss = reconstruction_loss(out, data.fp_out[idx], None if data.grad is None else data.grad[idx])
            beta = beta_at(it + 1, cfg.iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
            if beta is not None and alphas:
                loss = loss + cfg.lam * rounding_regulariser([q.soft_h() for q in rounders], beta)
            for opt in optimisers:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimisers:
                opt.step()
            if scheduler is not None:
                scheduler.step()
            _keep_ordered(acts)
            if bar is not None:
                bar.update(1)
                if it % 10 == 0:
                    bar.set_postfix(unit=unit.name, loss=f"{float(loss.detach()):.4g}")
    binary = _binary_fraction(rounders)
    for q in rounders:
        q.harden()
    learned = unit_loss(module, data)
    with _nearest(rounders):
        nearest_after = unit_loss(module, data)
    return UnitReport(unit.name, nearest_before, nearest_after, learned, binary, cfg.iters if optimisers else 0)


@torch.no_grad()
def _binary_fraction(rounders: list[LearnedRoundingQuantizer]) -> float:
    if not rounders:
        return 1.0
    hs = torch.cat([q.soft_h().flatten() for q in rounders])
    return float(((hs <= 0.01) | (hs >= 0.99)).float().mean())


@torch.no_grad()
def _keep_ordered(acts: list[nn.Module]) -> None:
    # a learned step must stay positive: bounds that cross are reset to a minimal width (the core's rule)
    for q in acts:
        if (q.upper <= q.lower).any():
            q.set_bounds(q.lower, torch.maximum(q.upper, q.lower))


# ------------------------------------------------------------------------------------------------ the run

@dataclass
class Reconstruction:
    """A whole reconstruction PTQ run: initial bounds, learned-rounding weights, units in forward order."""
    config: ReconConfig
    blockwise: bool
    init: str = "dobi"
    init_params: dict = field(default_factory=dict)
    reports: list[UnitReport] = field(default_factory=list)

    def run(self, qmodel: nn.Module, ctx: CalibContext) -> list[UnitReport]:
        create_method(self.init, **self.init_params).calibrate(qmodel, ctx)
        for name, q, _ in weight_quantizers(qmodel):
            new = make_quantizer("learned-rounding", q)
            new.set_bounds(*uniform_grid_bounds(q))  # an integer-grid type's own grid (deploy scope: zero point 0)
            replace_quantizer(qmodel, name, new)
        batch = ctx.require_batch()
        generator = seed_everything(ctx.seed)
        fp_model = ctx.fp_model
        units = plan_units(qmodel, batch[:1], self.blockwise)
        self.reports = []
        total = self.config.iters * len(units)
        with tqdm(total=total, desc="reconstruction", unit="it", disable=not ctx.progress, leave=False) as bar:
            for i, unit in enumerate(units):
                later = [u.module for u in units[i + 1:]]
                self.reports.append(reconstruct_unit(unit, self._unit_data(qmodel, fp_model, unit, later, batch),
                                                     self.config, generator, bar))
        for _, q, _ in weight_quantizers(qmodel):
            if isinstance(q, LearnedRoundingQuantizer) and q.mode == "soft":
                q.harden()
        return self.reports

    def _unit_data(self, qmodel: nn.Module, fp_model: nn.Module, unit: Unit, later: list[nn.Module],
                   batch: torch.Tensor) -> UnitData:
        fp_in, fp_out = capture_unit(fp_model, fp_model.get_submodule(unit.name), batch, with_output=True)
        q_in, _ = capture_unit(qmodel, unit.module, batch, with_output=False)
        rows, samples = fp_out.shape[0], batch.shape[0]
        if rows % samples:
            raise ConfigError(f"reconstruction unit {unit.name}: its output's first dim ({rows}) is not a multiple of "
                              f"the {samples} calibration samples; expose units whose rows follow the batch")
        q_in.batch = fp_in.batch = rows  # rows, not samples: window attention sees windows x samples
        grad = None
        if self.config.loss == "fisher":
            with torch.no_grad():
                target = fp_model(batch)
            grad = output_gradient(qmodel, unit.module, later, batch, target)
        return UnitData(q_in, fp_in, fp_out, grad, rows // samples)


def summarise(reports: list[UnitReport]) -> dict:
    """A compact record of the run: units, iterations, and the loss ratios learned / nearest (same bounds)."""
    ratios = [r.learned / r.nearest_after for r in reports if r.nearest_after > 0]
    return {"units": len(reports), "iters_per_unit": max((r.iters for r in reports), default=0),
            "units_below_nearest": sum(r.learned < r.nearest_after for r in reports),
            "loss_ratio_geomean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else None,
            "min_binary_fraction": min((r.soft_fraction_binary for r in reports), default=1.0)}


class ReconstructionMethod(PTQMethod):
    """Base of the registered reconstruction methods: subclasses give `recon_config()` and `blockwise`; the run and
    its record (units, loss ratios) are shared."""

    blockwise: bool = True

    def recon_config(self) -> ReconConfig:
        raise NotImplementedError

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        self.recon = Reconstruction(self.recon_config(), blockwise=self.blockwise, init=self.params.init)
        self.recon.run(qmodel, ctx)

    def describe(self) -> dict:
        out = super().describe()
        recon = getattr(self, "recon", None)
        if recon is not None and recon.reports:
            out["reconstruction"] = summarise(recon.reports)
        return out

