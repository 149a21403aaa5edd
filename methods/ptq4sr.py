"""PTQ4SR = DBDC + Pac (Tu et al., CVPR 2023; spec §4.4, as released in the official code).

Stage 1, DBDC (`methods.dbdc`): weights l, u = min, max (per channel for per-channel weight quantizers);
activations: density-based dual clipping of a 2048-bin histogram, p = 1e-4 below 8 bits and 1e-5 at 8 bits
(the yml `percentile` is ignored by the released code, D16), averaged over `calib_batches` batches.

Stage 2, Pac (pixel-aware calibration), distilling from the FP model on LR patches only:
  phase A: Adam (default betas) on every activation bound, lr 5e-3 cosine-annealed to 2e-3, `iters` steps;
  phase B: Adam on every weight bound, lr 5e-6 cosine-annealed to 2e-6, `iters` steps;
  loss = L1_mean(O_fp, O_q) + 5 * mean over feature taps of PA(F_fp, F_q),
  PA(A, B) = mean((n(A) - n(B))^2), n(F) = per-sample L2-normalised flattened channel mean of F^2.
The feature taps are the model's `feature_modules()` (SwinIR: the 4 RSTB groups; CNNs: their main blocks);
without taps the loss is the L1 term alone. In the released code the features are detached, so the PA term
contributes no gradient: `pa_grad=False` (default) reproduces that, `pa_grad=True` is the paper's intent.
Each bound's gradient is scaled by LSQ's g = 1/sqrt(numel(x0) * (2^(b-1) - 1)), x0 = the tensor the
quantizer saw at calibration (the weight, or the activation on the calibration batch).

Fine-tuning patches: `batch` LR patches of `patch` x `patch` (default 64 = the calibration patch size) from
`ctx.train_dir` (bench.data.calib.PatchSampler, which also flips/transposes; the release used un-augmented
192-HR crops), or crops of the calibration batch when the context has no train_dir.
Bounds that cross during Pac are repaired (`methods.finetune.KeepOrdered`, counted in `history.repairs`).

Deviation from the release: the model stays in eval() (the release calls train(), which turns SwinIR's
DropPath on).

Paper / official code / this project: follows the released code (spec §4.4, D16): DBDC's effective p, the LSQ
gradient factor, the phase learning rates, and the detached feature term (`pa_grad=False`; `pa_grad=True` is the
paper's intent). Departures: eval() mode (the release's train() turns SwinIR's DropPath on), augmented LR patches
from the training folder (the release: un-augmented 192-HR crops), and on SwinIR the feature taps are the 4 RSTB
groups (the 2DQuant paper reran PTQ4SR on SwinIR without saying which, D17). The released code does not run as
released (D16), so none of these differences could be measured against it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext
from bench.quant.quantizer import FakeQuantizer, lsq_grad_scale
from bench.quant.surgery import activation_quantizers, quantizers, weight_quantizers
from methods.base import PTQMethod
from methods.dbdc import RunningMean, dbdc_mass, dbdc_range
from methods.finetune import (
    BoundTrainer,
    Features,
    KeepOrdered,
    OptimConfig,
    TrainResult,
    seed_everything,
    training_patches,
)
from methods.registry import register_method

# ------------------------------------------------------------------------------------------------ loss

def pixel_attention(feature: torch.Tensor) -> torch.Tensor:
    """n(F): the per-sample L2-normalised, flattened spatial map of the channel mean of F^2.

    (B, C, H, W) CNN maps average over dim 1; (B, L, C) token sequences (SwinIR's RSTB outputs, L = H*W)
    average over the last dim, which gives the same (B, H*W) spatial map.
    """
    if feature.dim() == 4:
        energy = feature.pow(2).mean(dim=1)
    elif feature.dim() == 3:
        energy = feature.pow(2).mean(dim=-1)
    else:
        raise ValueError(f"pixel attention needs a (B, C, H, W) or (B, L, C) feature, got {tuple(feature.shape)}")
    return F.normalize(energy.flatten(1), dim=1)


def pa_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PA(A, B) = mean((n(A) - n(B))^2)."""
    return (pixel_attention(a) - pixel_attention(b)).pow(2).mean()


def pac_loss(out_q: torch.Tensor, out_fp: torch.Tensor, feats_q: Features, feats_fp: Features,
             pa_weight: float = 5.0, pa_grad: bool = False) -> torch.Tensor:
    """L1_mean(O_fp, O_q) + pa_weight * mean over taps of PA(F_fp, F_q).

    pa_grad=False: the student's features are detached (released code): the term is in the value only.
    """
    loss = F.l1_loss(out_q, out_fp)
    if feats_q:
        terms = [pa_loss(ff, fq if pa_grad else fq.detach()) for fq, ff in zip(feats_q, feats_fp)]
        loss = loss + pa_weight * torch.stack(terms).mean()
    return loss


# ----------------------------------------------------------------------------------------------- DBDC

def dbdc_calibrate(qmodel: nn.Module, batches: list[torch.Tensor], p: float | None) -> dict[str, int]:
    """Set every quantizer's DBDC bounds; returns numel(x0) per quantizer name (for the LSQ factor).

    Activation bounds are the running mean over `batches` of the per-batch DBDC bounds.
    """
    numel: dict[str, int] = {}
    for name, q, weight in weight_quantizers(qmodel):
        w = weight.detach()
        if q.per_channel:
            flat = w.movedim(q.per_channel_axis, 0).reshape(w.shape[q.per_channel_axis], -1)
            q.set_bounds(flat.amin(dim=1), flat.amax(dim=1))
        else:
            q.set_bounds(float(w.min()), float(w.max()))
        numel[name] = w.numel()

    means: dict[str, RunningMean] = {name: RunningMean() for name, _ in activation_quantizers(qmodel)}

    def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
        r = dbdc_range(x, dbdc_mass(q.bits) if p is None else p)
        means[name].update(r.lower, r.upper)
        numel.setdefault(name, x.numel())

    for batch in batches:
        capture_activations(qmodel, batch, observe)
    for name, q in activation_quantizers(qmodel):
        if means[name].count == 0:
            raise ConfigError(f"activation quantizer {name} saw no input during calibration; "
                              f"the quantization scope covers a layer the model never runs")
        q.set_bounds(means[name].lower, means[name].upper)
    return numel


# ------------------------------------------------------------------------------------------------ Pac

@dataclass
class PacHistory:
    act: TrainResult = field(default_factory=TrainResult)
    weight: TrainResult = field(default_factory=TrainResult)
    repairs: int = 0


@register_method("ptq4sr")
class PTQ4SR(PTQMethod):
    """PTQ4SR: DBDC histogram clipping, then Pac fine-tuning of activation then weight bounds (L1 + PA)."""

    @dataclass(frozen=True)
    class Params:
        p: float | None = None            # DBDC clipped mass; None = 1e-4 (< 8 bits) / 1e-5 (8 bits)
        calib_batches: int = 1            # DBDC batches: the shared calibration batch, then sampled ones
        iters: int = 250                  # T, per phase
        batch: int = 2                    # Pac batch size
        patch: int = 64                   # Pac LR patch size
        act_lr: float = 5e-3
        act_lr_min: float = 2e-3
        weight_lr: float = 5e-6
        weight_lr_min: float = 2e-6
        pa_weight: float = 5.0
        pa_grad: bool = False             # False = released code (detached PA term, spec D16)
        lsq_scale: bool = True            # LSQ gradient factor on the bounds
        seed: int = 0

        def __post_init__(self) -> None:
            if self.p is not None and not 0.0 <= self.p < 0.5:
                raise ValueError(f"p={self.p} must be in [0, 0.5) or None")
            for key in ("calib_batches", "batch", "patch"):
                if getattr(self, key) < 1:
                    raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
            if self.iters < 0:
                raise ValueError(f"iters={self.iters} must be >= 0")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.history = PacHistory()

    # ---------------------------------------------------------------------------------------- stages
    def calibration_batches(self, ctx: CalibContext) -> list[torch.Tensor]:
        first = ctx.require_batch()
        if self.params.calib_batches == 1:
            return [first]
        n, _, h, _ = first.shape
        draw = training_patches(ctx, n, h, self.params.seed)
        return [first] + [draw() for _ in range(self.params.calib_batches - 1)]

    def pac(self, qmodel: nn.Module, ctx: CalibContext, numel: dict[str, int],
            phases: tuple[str, ...] = ("act", "weight")) -> PacHistory:
        """Pac: phase "act" (activation bounds) then phase "weight" (weight bounds), `iters` steps each."""
        prm = self.params
        history = PacHistory()
        if prm.iters == 0:
            return history
        generator = seed_everything(prm.seed)
        next_batch = training_patches(ctx, prm.batch, prm.patch, prm.seed, generator=generator)
        all_q = quantizers(qmodel)
        saved_scale = {name: q.grad_scale for name, q in all_q}
        guard = KeepOrdered([q for _, q in all_q])
        try:
            if prm.lsq_scale:
                for name, q in all_q:
                    q.grad_scale = lsq_grad_scale(numel[name], q.bits)

            def loss(out_q, out_fp, feats_q, feats_fp):
                return pac_loss(out_q, out_fp, feats_q, feats_fp, prm.pa_weight, prm.pa_grad)

            settings = {"act": ([q for _, q in all_q if not q.is_weight], prm.act_lr, prm.act_lr_min),
                        "weight": ([q for _, q in all_q if q.is_weight], prm.weight_lr, prm.weight_lr_min)}
            for phase in phases:
                qs, lr, lr_min = settings[phase]
                cfg = OptimConfig(lr=lr, lr_min=lr_min, iters=prm.iters, schedule="cosine")
                bounds = [b for q in qs for b in (q.lower, q.upper)]
                trainer = BoundTrainer(qmodel, ctx.fp_model, bounds, loss, cfg, device=ctx.device,
                                       desc=f"ptq4sr Pac {phase}", progress=ctx.progress, after_step=guard)
                setattr(history, phase, trainer.run(next_batch))
        finally:
            for name, q in all_q:
                q.grad_scale = saved_scale[name]
        history.repairs = guard.repairs
        return history

    # ---------------------------------------------------------------------------------------- method
    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        if ctx.fp_model is None and self.params.iters > 0:
            raise ConfigError("ptq4sr's Pac stage needs the full-precision teacher: CalibContext(fp_model=...)")
        numel = dbdc_calibrate(qmodel, self.calibration_batches(ctx), self.params.p)
        self.history = self.pac(qmodel, ctx, numel)
