"""BRECQ (Li et al., ICLR 2021, arXiv 2102.05426) and QDrop (Wei et al., ICLR 2022, arXiv 2203.05740).

BRECQ, registered as "brecq": block reconstruction. Each of the model's reconstruction units (models/: SwinIR's
Swin blocks, IMDN's IMDBs, the CNNs' main blocks; `methods.reconstruction.reconstruction_units`), and each quantized
layer outside every unit (first conv, upsampler), is optimised in forward order on its cached input/output:
the unit's output error (summed over channels, BRECQ's lp_loss with p = 2; optionally weighted by the squared
diagonal-Fisher term |g| + 1 of the model output loss, `loss="fisher"`) plus AdaRound's rounding regulariser,
with Adam on every weight's V (lr 1e-3) and on the unit's activation bounds (LSQ-style steps, lr 4e-5, cosine to
0). Weight rounding and activation steps are learned jointly in one pass, as QDrop's code does (BRECQ's code
runs a weight pass, then an activation pass). The unit's input is the quantized model's (earlier units already
reconstructed).

QDrop, registered as "qdrop": BRECQ where, during reconstruction, each activation quantizer inside the unit drops
its quantization element-wise with probability `drop` (0.5; the value passes unquantized), and the unit's input
mixes the quantized and FP inputs element-wise with the same probability (QDrop's code). drop = 0 is BRECQ
exactly, with the same random stream.

Bounds start from the registered method `init` (default DOBI, recorded). Paper defaults: 20k iterations per
unit, batch 32, lam 0.01, beta 20 -> 2, warm-up 0.2, activation lr 4e-5.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from methods.adaround import check_common, check_init
from methods.reconstruction import ReconConfig, ReconstructionMethod
from methods.registry import register_method


@register_method("brecq")
class BRECQ(ReconstructionMethod):
    """BRECQ: block-wise reconstruction, AdaRound rounding + learned activation bounds, bounds from `init`."""

    @dataclass(frozen=True)
    class Params:
        iters: int = 20000      # per unit (paper)
        batch: int = 32
        lam: float = 0.01
        beta_start: float = 20.0
        beta_end: float = 2.0
        warmup: float = 0.2
        lr: float = 1e-3        # Adam on V
        lr_act: float = 4e-5    # Adam on activation bounds (0: keep them)
        loss: Literal["mse", "fisher"] = "mse"
        init: str = "dobi"

        def __post_init__(self) -> None:
            check_common(self.iters, self.batch, self.lam, self.warmup, self.beta_start, self.beta_end, self.lr)
            check_init(self.init)
            if self.lr_act < 0:
                raise ValueError(f"lr_act={self.lr_act} must be >= 0 (0 keeps the activation bounds)")

    def drop(self) -> float:
        return 0.0

    def recon_config(self) -> ReconConfig:
        p = self.params
        return ReconConfig(iters=p.iters, batch=p.batch, lam=p.lam, beta_start=p.beta_start, beta_end=p.beta_end,
                           warmup=p.warmup, lr_round=p.lr, lr_act=p.lr_act, drop=self.drop(), loss=p.loss)


@register_method("qdrop")
class QDrop(BRECQ):
    """QDrop: BRECQ with activation quantization dropped element-wise (probability `drop`) while reconstructing."""

    @dataclass(frozen=True)
    class Params(BRECQ.Params):
        drop: float = 0.5

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.drop < 1.0:
                raise ValueError(f"drop={self.drop} must be in [0, 1)")

    def drop(self) -> float:
        return self.params.drop
