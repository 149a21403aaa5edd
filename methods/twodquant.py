"""2DQuant = DOBI + DQC (Liu et al., NeurIPS 2024; spec §4.5, §4.6), registered as "2dquant".

Stage 1: DOBI bounds (`methods.dobi`), variant "paper" by default (= the DOBI method's default; the "code"
preset switches it to "code" unless `dobi_variant` is given).
Stage 2, DQC: Adam on every quantizer bound (768 scalars on SwinIR-light), distilling the FP model into the
fake-quant model on augmented LR patches (the target is the FP output; no HR is used), with the output loss
plus lam (= 5) times a feature loss over the model's `feature_modules()` (SwinIR: the 4 RSTB groups).

Presets (`preset`; any of batch / iters / lr / beta1 / beta2 / schedule / loss given overrides it):
  | preset | batch | iters | lr   | betas        | schedule | loss  |
  | paper  | 32    | 3000  | 1e-2 | (0.9, 0.999) | cosine   | paper |
  | code   | 16    | 4000  | 1e-2 | (0.9, 0.99)  | constant | code  |
Loss "paper" (Eqs. 4-6): L_O = ||O - O_q||_1 / (C H W) per image, batch mean;
  L_F = sum_i ||F_i/||F_i|| - F_qi/||F_qi|| ||_2 / (C_i H_i W_i) per image (un-squared), batch mean.
Loss "code" (the released code, its broadcasting bug included, spec §4.6 / D6): see `dqc_loss_code`.

Stage-one reuse: `stage_one()` names the DOBI calibration that stage 1 runs (method name and params). A
caller that already holds bounds of exactly that calibration for the same model, bits, scope and
calibration batch (the matrix runner, after a DOBI cell) hands them over with `reuse_stage_one`; stage 1 then
copies them instead of searching again, and `describe()["stage_one"]` records that they were reused and
where from. The result is identical: DOBI is deterministic and DQC reseeds itself.

Bounds that cross during DQC are repaired (`methods.finetune.KeepOrdered`, counted in `history.repairs`).
Model selection never uses a test set: `select="last"` keeps the final bounds; `select="val"` evaluates the
PSNR of the quantized output against the FP output on `ctx.val_batch` (held-out training patches; without
one, `val_n` patches of the held-out "val" split of `ctx.train_dir`) every `val_every` iterations and keeps
the best bounds.

Paper / official code / this project: both sides are presets (spec §4.6, D4-D8): `preset=paper` (default; batch
32, 3000 iterations, cosine, Adam 0.9/0.999, the paper's loss formulas) and `preset=code` (batch 16, 4000
iterations, constant lr, Adam 0.9/0.99, the released loss scaling with its broadcasting bug); DOBI follows the same
split (`dobi_variant`; methods/dobi.py: -0.008 dB for "code" on SwinIR-light x2 W4A4 Set5). One departure from
both: the released code picks the best Set5 checkpoint and then reports Set5 (D8); this project never selects on
a test set (`select=last`, or `select=val` on held-out training patches). The preset difference was not measured
in PSNR here (thousands of DQC iterations per row exceed the CPU budget of the reference tables, which use
iters=100, batch=4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import ConfigError
from bench.quant.pipeline import CalibContext
from bench.quant.surgery import quantizers
from methods.base import PTQMethod
from methods.dobi import DOBI
from methods.finetune import (
    BoundTrainer,
    Features,
    KeepOrdered,
    OptimConfig,
    TrainResult,
    model_scale,
    psnr,
    seed_everything,
    training_patches,
)
from methods.registry import register_method

# {quantizer name: (lower, upper)} as tensors of the quantizer's bound shape
StageOneBounds = dict[str, tuple[torch.Tensor, torch.Tensor]]

# ------------------------------------------------------------------------------------------------ losses

def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1)


def dqc_loss_paper(out_q: torch.Tensor, out_fp: torch.Tensor, feats_q: Features, feats_fp: Features,
                   lam: float = 5.0) -> torch.Tensor:
    """L_O + lam * L_F as written in the paper (per-sample norms carry gradient; L2 distance un-squared)."""
    loss = (out_q - out_fp).abs().mean()  # = ||.||_1 / (C H W) per image, averaged over the batch
    for fq, ff in zip(feats_q, feats_fp):
        fq, ff = _per_sample(fq), _per_sample(ff)
        diff = fq / fq.norm(dim=1, keepdim=True) - ff / ff.norm(dim=1, keepdim=True)
        loss = loss + lam * (diff.norm(dim=1) / fq.shape[1]).mean()
    return loss


def dqc_loss_code(out_q: torch.Tensor, out_fp: torch.Tensor, feats_q: Features, feats_fp: Features,
                  lam: float = 5.0) -> torch.Tensor:
    """The released code's DQC loss, reproduced with its bug.

    l_pix = L1_mean(O_q, O_fp) * B / numel(O)   (= sum|diff| / (B (C H W)^2)).
    Per feature: the per-sample Frobenius norm, detached, shaped (B, 1, 1, 1), divides the feature. For
    (B, L, C) token features (SwinIR) that broadcasts to (B, B, L, C): entry [j, i] is sample i divided by
    sample j's norm, i.e. every sample is normalised by every sample's norm (the code's bug; 4-D CNN maps
    broadcast per sample, as intended). l_feat = lam * MSE_mean(F~_q, F~_fp) / numel(F~), numel = B^2 L C.
    """
    batch = out_q.shape[0]
    loss = F.l1_loss(out_q, out_fp) * batch / out_q.numel()
    for fq, ff in zip(feats_q, feats_fp):
        norm_q = _per_sample(fq).detach().norm(dim=1).reshape(batch, 1, 1, 1)
        norm_fp = _per_sample(ff).detach().norm(dim=1).reshape(batch, 1, 1, 1)
        tq, tf = fq / norm_q, ff / norm_fp
        loss = loss + lam * F.mse_loss(tq, tf) / tq.numel()
    return loss


DQC_LOSSES = {"paper": dqc_loss_paper, "code": dqc_loss_code}


# ------------------------------------------------------------------------------------------------ presets

@dataclass(frozen=True)
class DQCSettings:
    batch: int
    iters: int
    lr: float
    beta1: float
    beta2: float
    schedule: str
    loss: str
    dobi_variant: str


PRESETS = {
    "paper": DQCSettings(batch=32, iters=3000, lr=1e-2, beta1=0.9, beta2=0.999, schedule="cosine",
                         loss="paper", dobi_variant="paper"),
    "code": DQCSettings(batch=16, iters=4000, lr=1e-2, beta1=0.9, beta2=0.99, schedule="constant",
                        loss="code", dobi_variant="code"),
}


@register_method("2dquant")
class TwoDQuant(PTQMethod):
    """2DQuant: DOBI bound search, then DQC distillation of all bounds from the FP model (paper/code presets)."""

    @dataclass(frozen=True)
    class Params:
        preset: Literal["paper", "code"] = "paper"
        batch: int | None = None
        iters: int | None = None
        lr: float | None = None
        beta1: float | None = None
        beta2: float | None = None
        schedule: Literal["cosine", "constant"] | None = None
        loss: Literal["paper", "code"] | None = None
        dobi_variant: Literal["paper", "code"] | None = None
        K: int = 100                       # DOBI search steps
        lam: float = 5.0                   # feature-loss weight (code: loss_weight 5; paper: unstated)
        lr_min: float = 0.0                # cosine eta_min
        weight_decay: float = 0.0
        patch: int = 64                    # DQC LR patch size
        select: Literal["last", "val"] = "last"
        val_every: int = 100
        val_n: int = 16                    # held-out patches when the context brings no val_batch
        seed: int = 3407

        def __post_init__(self) -> None:
            for key in ("batch", "patch", "val_every", "val_n", "K"):
                value = getattr(self, key)
                if value is not None and value < 1:
                    raise ValueError(f"{key}={value} must be >= 1")
            if self.iters is not None and self.iters < 0:
                raise ValueError(f"iters={self.iters} must be >= 0")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.history = TrainResult()
        self._handed_over: tuple[StageOneBounds, dict] | None = None  # (bounds, source) from reuse_stage_one
        self._stage_one_reused: dict | None = None  # set by calibrate: the source of the bounds it reused

    def settings(self) -> DQCSettings:
        """The preset with every explicitly given parameter applied."""
        base = PRESETS[self.params.preset]
        chosen = {key: getattr(self.params, key) for key in DQCSettings.__dataclass_fields__}
        return DQCSettings(**{k: (getattr(base, k) if v is None else v) for k, v in chosen.items()})

    def describe(self) -> dict:
        record = super().describe()
        record["settings"] = dict(self.settings().__dict__)
        name, params = self.stage_one()
        record["stage_one"] = {"method": name, "params": params, "reused": self._stage_one_reused is not None,
                               **({"source": self._stage_one_reused} if self._stage_one_reused else {})}
        return record

    # ------------------------------------------------------------------------------------ stage one
    def stage_one(self) -> tuple[str, dict]:
        """(registry name, params) of the calibration stage 1 runs: DOBI with this preset's variant and K."""
        return "dobi", {"variant": self.settings().dobi_variant, "K": self.params.K}

    def reuse_stage_one(self, bounds: StageOneBounds, source: dict) -> None:
        """Start DQC from these bounds ({quantizer name: (lower, upper)}, the result of `stage_one()` on the
        same model, bits, scope and calibration batch) instead of running DOBI; `source` is recorded."""
        self._handed_over = (bounds, dict(source))

    def _initial_bounds(self, qmodel: nn.Module, ctx: CalibContext, variant: str) -> None:
        named = quantizers(qmodel)
        if self._handed_over is not None and set(self._handed_over[0]) == {name for name, _ in named}:
            bounds, source = self._handed_over
            for name, q in named:
                q.set_bounds(*bounds[name])
            self._stage_one_reused = source
            return
        # No bounds handed over, or bounds of another quantizer layout: search.
        self._stage_one_reused = None
        DOBI(variant=variant, K=self.params.K).calibrate(qmodel, ctx)

    # ---------------------------------------------------------------------------------------- stages
    def _val_batch(self, ctx: CalibContext) -> torch.Tensor:
        """ctx.val_batch, else `val_n` patches of the held-out "val" split of ctx.train_dir."""
        if ctx.val_batch is not None:
            return ctx.val_batch
        if ctx.train_dir is None:
            raise ConfigError("2dquant select=val needs held-out patches: give CalibContext(val_batch=...) or "
                              "train_dir (its 'val' split is used), or use select=last")
        from bench.data.calib import calibration_batch
        return calibration_batch(ctx.train_dir, model_scale(ctx.fp_model), n=self.params.val_n,
                                 patch=self.params.patch, seed=ctx.seed, split="val")

    def _validator(self, qmodel: nn.Module, ctx: CalibContext, val: torch.Tensor | None):
        if val is None:
            return None
        val = val.to(ctx.device)
        with torch.no_grad():
            target = ctx.fp_model(val)
        return lambda: psnr(qmodel(val), target)

    def dqc(self, qmodel: nn.Module, ctx: CalibContext, val: torch.Tensor | None = None) -> TrainResult:
        """DQC on every bound; with `val` (LR patches), keep the bounds with the best PSNR on it."""
        s, prm = self.settings(), self.params
        if s.iters == 0:
            return TrainResult()
        generator = seed_everything(prm.seed)
        next_batch = training_patches(ctx, s.batch, prm.patch, prm.seed, generator=generator)
        all_q = [q for _, q in quantizers(qmodel)]
        bounds = [b for q in all_q for b in (q.lower, q.upper)]
        cfg = OptimConfig(lr=s.lr, iters=s.iters, betas=(s.beta1, s.beta2), weight_decay=prm.weight_decay,
                          schedule=s.schedule, lr_min=prm.lr_min)
        loss_fn = DQC_LOSSES[s.loss]

        def loss(out_q, out_fp, feats_q, feats_fp):
            return loss_fn(out_q, out_fp, feats_q, feats_fp, prm.lam)

        guard = KeepOrdered(all_q)
        trainer = BoundTrainer(qmodel, ctx.fp_model, bounds, loss, cfg, device=ctx.device, desc="2dquant DQC",
                               progress=ctx.progress, after_step=guard)
        result = trainer.run(next_batch, validate=self._validator(qmodel, ctx, val), val_every=prm.val_every)
        result.repairs = guard.repairs
        return result

    # ---------------------------------------------------------------------------------------- method
    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        s = self.settings()
        if ctx.fp_model is None and s.iters > 0:
            raise ConfigError("2dquant's DQC stage needs the full-precision teacher: CalibContext(fp_model=...)")
        val = self._val_batch(ctx) if self.params.select == "val" and s.iters > 0 else None  # fail before DOBI
        self._initial_bounds(qmodel, ctx, s.dobi_variant)
        self.history = self.dqc(qmodel, ctx, val)
