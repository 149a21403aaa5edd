"""Shared machinery for the methods that fine-tune quantizer bounds by distillation (Pac, DQC).

Pieces, each usable alone:
  * `FeatureTap`: forward hooks that collect the outputs of a model's `feature_modules()`;
  * `only_training(model, params)`: freezes every parameter except the given bounds, restores afterwards;
  * `OptimConfig` + `build_optimizer` / `build_scheduler`: Adam with a cosine or constant schedule;
  * `BoundTrainer`: the distillation loop (teacher = full-precision model, student = fake-quant model)
    with a tqdm progress bar showing the loss, optional periodic validation that keeps the best bounds,
    and the loss history as result;
  * `KeepOrdered`: after each step, a pair of bounds that crossed (u <= l) is repaired to
    u = l + 1e-6 * max(1, |l|) (the core's zero-width rule) and counted; neither paper states what happens then;
  * `training_patches`: fresh augmented LR batches (PatchSampler on `ctx.train_dir`, else crops of the
    calibration batch); `seed_everything`, `model_scale`.

Both models stay in eval mode throughout: SwinIR's DropPath would otherwise be active (spec §1).
"""
from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench.quant.pipeline import CalibContext
from bench.quant.quantizer import FakeQuantizer

Features = list[torch.Tensor]


class DistillLoss(Protocol):
    def __call__(self, out_q: torch.Tensor, out_fp: torch.Tensor,
                 feats_q: Features, feats_fp: Features) -> torch.Tensor: ...


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The model's distillation taps (`model.feature_modules()`), or [] if it exposes none."""
    getter = getattr(model, "feature_modules", None)
    return list(getter()) if callable(getter) else []


class FeatureTap:
    """Collects the outputs of `modules` on every forward while active (a context manager)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.outputs: Features = []
        self._handles: list = []

    def _hook(self, _module, _inputs, output) -> None:
        # Some blocks return tuples (e.g. (features, aux)); the first element is the feature map.
        self.outputs.append(output[0] if isinstance(output, (tuple, list)) else output)

    def __enter__(self) -> FeatureTap:  # noqa: PYI034 (typing.Self needs 3.11; the project supports 3.10)
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.outputs = []

    def take(self) -> Features:
        """The features captured since the last call, in forward order."""
        outputs, self.outputs = self.outputs, []
        return outputs


@contextlib.contextmanager
def only_training(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Freeze every parameter of `model` except `params` (and keep eval mode); restore both on exit."""
    saved = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()
    try:
        yield
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode for the teacher while training; restores its previous mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (CPU and CUDA); return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class OptimConfig:
    """Adam on the bounds with a per-iteration schedule.

    schedule "cosine": CosineAnnealingLR(T_max=iters, eta_min=lr_min); "constant": lr throughout.
    """
    lr: float
    iters: int
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    lr_min: float = 0.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        self.betas = tuple(float(b) for b in self.betas)


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(list(params), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, cfg.iters),
                                                          eta_min=cfg.lr_min)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


class KeepOrdered:
    """after_step hook: keeps u > l for `qs` (bounds crossing under fine-tuning would freeze the quantizer)."""

    def __init__(self, qs: list[FakeQuantizer]) -> None:
        self.qs = qs
        self.repairs = 0

    def __call__(self) -> None:
        for q in self.qs:
            bad = q.upper <= q.lower
            if bad.any():
                self.repairs += int(bad.sum())
                width = 1e-6 * torch.clamp(q.lower.abs(), min=1.0)
                q.upper.copy_(torch.where(bad, q.lower + width, q.upper))


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    val_psnr: list[tuple[int, float]] = field(default_factory=list)  # (iteration, PSNR)
    best_iter: int | None = None  # iteration whose bounds were kept (None = the last)
    repairs: int = 0  # crossed bound pairs repaired by KeepOrdered (filled in by the method)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1] (outputs clamped), over the whole batch, for model selection."""
    mse = torch.mean((x.clamp(0, 1) - ref.clamp(0, 1)).double() ** 2).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


class BoundTrainer:
    """Distils a full-precision teacher into the fake-quant student by training only `bounds`.

    Every step: teacher forward (no grad) and student forward on the same batch, both with their
    `feature_modules()` hooked; `loss_fn(out_q, out_fp, feats_q, feats_fp)`; Adam step on the bounds.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, bounds: Sequence[nn.Parameter],
                 loss_fn: DistillLoss, cfg: OptimConfig, device: torch.device | str = "cpu",
                 desc: str = "finetune", progress: bool = True,
                 after_step: Callable[[], None] | None = None) -> None:
        self.student, self.teacher = student, teacher
        self.bounds = list(bounds)
        self.loss_fn, self.cfg = loss_fn, cfg
        self.device = torch.device(device)
        self.desc, self.progress = desc, progress
        # e.g. keep l < u after each update; called under no_grad
        self.after_step = after_step

    def _teacher_forward(self, x: torch.Tensor, tap: FeatureTap) -> tuple[torch.Tensor, Features]:
        with torch.no_grad():
            out = self.teacher(x)
        return out, [f.detach() for f in tap.take()]

    def step_loss(self, x: torch.Tensor, tap_q: FeatureTap, tap_fp: FeatureTap) -> torch.Tensor:
        out_fp, feats_fp = self._teacher_forward(x, tap_fp)
        out_q = self.student(x)
        return self.loss_fn(out_q, out_fp, tap_q.take(), feats_fp)

    def run(self, next_batch: Callable[[], torch.Tensor],
            validate: Callable[[], float] | None = None, val_every: int = 100) -> TrainResult:
        """Train for cfg.iters steps. With `validate` (higher is better), evaluate every `val_every`
        steps and at the end, and leave the best bounds in place."""
        result = TrainResult()
        if self.cfg.iters <= 0 or not self.bounds:
            return result
        optimizer = build_optimizer(self.bounds, self.cfg)
        scheduler = build_scheduler(optimizer, self.cfg)
        best_score, best_state = -math.inf, None
        with only_training(self.student, self.bounds), frozen_eval(self.teacher), \
                FeatureTap(feature_modules(self.student)) as tap_q, \
                FeatureTap(feature_modules(self.teacher)) as tap_fp:
            bar = tqdm(range(1, self.cfg.iters + 1), desc=self.desc, disable=not self.progress,
                       dynamic_ncols=True, leave=False)
            for it in bar:
                x = next_batch().to(self.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss = self.step_loss(x, tap_q, tap_fp)
                loss.backward()
                optimizer.step()
                scheduler.step()
                if self.after_step is not None:
                    with torch.no_grad():
                        self.after_step()
                value = float(loss.detach())
                result.losses.append(value)
                bar.set_postfix(loss=f"{value:.4g}")
                if validate is not None and (it % val_every == 0 or it == self.cfg.iters):
                    with torch.no_grad():
                        score = validate()
                    tap_q.take(), tap_fp.take()  # drop the features the validation forward captured
                    result.val_psnr.append((it, score))
                    if score > best_score:
                        best_score, result.best_iter = score, it
                        best_state = [b.detach().clone() for b in self.bounds]
            bar.close()
        if best_state is not None:
            with torch.no_grad():
                for b, saved in zip(self.bounds, best_state):
                    b.copy_(saved)
        return result


# ------------------------------------------------------------------------------------------ patch supply

def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random h-flip, v-flip and transpose, each with p = 0.5 (the 2DQuant training augmentation).

    Transposing needs square patches; non-square batches only get the flips.
    """
    out = []
    for img in x:
        flips = torch.rand(3, generator=generator)
        if flips[0] < 0.5:
            img = img.flip(-1)
        if flips[1] < 0.5:
            img = img.flip(-2)
        if flips[2] < 0.5 and img.shape[-1] == img.shape[-2]:
            img = img.transpose(-1, -2)
        out.append(img)
    return torch.stack(out)


def crops_from_batch(images: torch.Tensor, batch_size: int, patch: int,
                     generator: torch.Generator) -> torch.Tensor:
    """`batch_size` random `patch`-sized crops of random images of `images` (N, 3, h, w), augmented."""
    n, _, h, w = images.shape
    if patch > min(h, w):
        raise ValueError(f"patch {patch} is larger than the calibration patches ({h}x{w})")
    picks = torch.randint(n, (batch_size,), generator=generator).tolist()
    tops = torch.randint(h - patch + 1, (batch_size,), generator=generator).tolist()
    lefts = torch.randint(w - patch + 1, (batch_size,), generator=generator).tolist()
    crops = torch.stack([images[i, :, t:t + patch, l:l + patch] for i, t, l in zip(picks, tops, lefts)])
    return augment(crops, generator)


def model_scale(model: nn.Module) -> int:
    """The upscaling factor: a `scale`/`upscale` int attribute, else measured by a 16x16 probe forward."""
    for attr in ("scale", "upscale"):
        value = getattr(model, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad(), frozen_eval(model):
        out = model(torch.zeros(1, 3, 16, 16, device=device))
    return max(1, out.shape[-1] // 16)


def training_patches(ctx: CalibContext, batch_size: int, patch: int, seed: int,
                     generator: torch.Generator | None = None) -> Callable[[], torch.Tensor]:
    """A source of fresh augmented LR training batches for fine-tuning (spec §3.2).

    With `ctx.train_dir`: `bench.data.calib.PatchSampler` (calib split, MATLAB-bicubic LR of the HR images,
    flips/transpose). Without it: random crops of the calibration batch with the same augmentation, so a
    method still runs on a context that carries only the calibration batch.
    """
    if ctx.train_dir is not None:
        from bench.data.calib import PatchSampler
        scale = model_scale(ctx.fp_model)
        sampler = PatchSampler(ctx.train_dir, scale, patch=patch, seed=seed, batch_size=batch_size)
        return sampler.next_batch
    images = ctx.require_batch().detach()
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    return lambda: crops_from_batch(images, batch_size, patch, generator)
