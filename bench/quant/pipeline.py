"""Quantize a model with a PTQ method: `quantize_with_method` (copy, calibrate, time it, check the result).

The core knows no method: anything with `calibrate(qmodel, ctx)` and `describe()` works.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.surgery import QuantConfig, quantize_model, quantizers


@dataclass
class CalibContext:
    """What a method may use to calibrate.

    fp_model: the full-precision teacher (filled in by quantize_with_method when left None).
    calib_batch: (N, 3, h, w) float LR patches in [0, 1] (spec §3.1: 32 x 64 x 64).
    train_dir: folder of HR training images, for methods that draw more patches (bench.data.calib.PatchSampler).
    val_batch: held-out LR patches for any model selection; never a test set.
    device: where to calibrate (default: the device of calib_batch). seed: for any randomness in the method.
    progress: show progress bars.
    `batch=` is accepted as an alias of `calib_batch`.
    """
    fp_model: nn.Module | None = None
    calib_batch: torch.Tensor | None = None
    train_dir: Path | None = None
    val_batch: torch.Tensor | None = None
    device: torch.device | str | None = None
    seed: int = 0
    progress: bool = True
    batch: InitVar[torch.Tensor | None] = None

    def __post_init__(self, batch: torch.Tensor | None) -> None:
        if batch is not None:
            if self.calib_batch is not None and self.calib_batch is not batch:
                raise ConfigError("CalibContext got both calib_batch and batch; pass only calib_batch")
            self.calib_batch = batch
        if self.calib_batch is not None and (self.calib_batch.dim() != 4 or self.calib_batch.shape[1] != 3):
            raise ConfigError(f"calibration batch must be (N, 3, h, w), got {tuple(self.calib_batch.shape)}")
        if self.device is None:
            self.device = self.calib_batch.device if self.calib_batch is not None else torch.device("cpu")
        self.device = torch.device(self.device)
        if self.train_dir is not None:
            self.train_dir = Path(self.train_dir)

    def require_batch(self) -> torch.Tensor:
        """The calibration batch on `device` (ConfigError if none was given)."""
        if self.calib_batch is None:
            raise ConfigError("this method needs a calibration batch: give CalibContext(calib_batch=...) "
                              "(bench.data.calib.calibration_batch) or --calib DIR")
        return self.calib_batch.to(self.device)


# Read access to the `batch=` alias (the InitVar's class default would otherwise read as None).
CalibContext.batch = property(lambda self: self.calib_batch, doc="alias of calib_batch")


class Method(Protocol):
    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None: ...

    def describe(self) -> dict: ...


def _check_calibrated(qmodel: nn.Module, method: Method) -> None:
    name = getattr(method, "name", type(method).__name__)
    bad = []
    for qname, q in quantizers(qmodel):
        lower, upper = q.lower.detach(), q.upper.detach()
        if not q.calibrated or not (torch.isfinite(lower).all() and torch.isfinite(upper).all()) \
                or (lower > upper).any():
            bad.append(qname)
    if bad:
        raise ConfigError(f"method {name!r} left {len(bad)} quantizer(s) uncalibrated or with invalid bounds "
                          f"(e.g. {bad[0]}); its calibrate() must set finite l <= u on every quantizer")


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" are the same place
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantize_with_method(fp_model: nn.Module, method: Method, w_bits: int, a_bits: int, ctx: CalibContext,
                         scope: str = "auto", per_channel_weights: bool = False,
                         layer_bits: Mapping[str, tuple[int, int]] | None = None) -> tuple[nn.Module, float]:
    """Quantize a copy of `fp_model` and calibrate it with `method`; returns (qmodel in eval mode, seconds).

    `layer_bits`: per-layer (w_bits, a_bits) for mixed precision (QuantConfig.layer_bits).
    The seconds are the wall time of `method.calibrate` alone (model surgery excluded).
    """
    config = QuantConfig(w_bits=w_bits, a_bits=a_bits, scope=scope, per_channel_weights=per_channel_weights,
                         layer_bits=layer_bits or ())
    if ctx.fp_model is None:
        ctx.fp_model = fp_model
    if not _same_device(_device_of(ctx.fp_model), ctx.device):
        # The teacher must live where calibration runs; copy it rather than move the caller's model.
        ctx.fp_model = copy.deepcopy(ctx.fp_model).to(ctx.device)
    ctx.fp_model.eval()
    qmodel = quantize_model(fp_model, config).to(ctx.device).eval()
    torch.manual_seed(ctx.seed)
    _synchronize(ctx.device)
    start = time.perf_counter()
    method.calibrate(qmodel, ctx)
    _synchronize(ctx.device)
    seconds = time.perf_counter() - start
    _check_calibrated(qmodel, method)
    qmodel.eval()
    qmodel.quant_method = dict(method.describe())
    return qmodel, seconds
