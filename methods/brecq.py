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
its quantization element-wise (the value passes unquantized), and the unit's input mixes the quantized and FP
inputs element-wise with the same probability (QDrop's code). Two spellings of that probability:
  * `drop` (default 0.5): the probability that an element is FP, the paper's p (§4, "drop quantization with
    probability p");
  * `keep_prob`: the official code's `drop_prob` (wimh966/QDrop: config `recon.drop_prob`, used as
    `where(rand < drop_prob, quantized, fp)` in its fake quantizers and for the input mix), i.e. the probability
    that an element KEEPS its quantized value. keep_prob = 1 - drop; given, it takes precedence and sets drop.
The masks are drawn as the official code draws them (quantized where rand < keep), so `keep_prob=k` and
`drop=1-k` give bit-identical masks under the same seed, and a `drop_prob` from an official config is passed
unchanged as `keep_prob`. At 0.5 the two readings coincide; at drop_prob = 0.25 the official run has 75 % FP
elements, i.e. `drop=0.75` here, not 0.25. drop = 0 (keep_prob = 1) is BRECQ exactly, with the same random stream.

Bounds start from the registered method `init` (default DOBI, recorded). Paper defaults: 20k iterations per
unit, batch 32, lam 0.01, beta 20 -> 2, warm-up 0.2, activation lr 4e-5.

Paper / official code / this project (yhhhli/BRECQ, wimh966/QDrop; issue 26, same tensors and seeds):
  * h(V), the rounding regulariser and lp_loss follow both papers and codes bit for bit; the beta schedule is
    counted from 1 as in the codes (methods/reconstruction.py: on IMDN x2 `IMDB1.c2` no measurable change).
  * one joint pass of rounding and activation steps (QDrop's code; BRECQ's code does two passes), initial bounds
    from DOBI (the codes: an L2.4 grid search over 80 shrinks), the Fisher loss' target is the SR output's squared
    error (BRECQ's code: the classifier's KL) - SR choices, effect not measured.
  * QDrop's element-wise drop equals the official one at p = 0.5 (masks drawn the official way, see above).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
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

    def keep(self) -> float:
        """Probability that an activation keeps its quantized value while reconstructing (1: no drop)."""
        return 1.0

    def recon_config(self) -> ReconConfig:
        p = self.params
        return ReconConfig(iters=p.iters, batch=p.batch, lam=p.lam, beta_start=p.beta_start, beta_end=p.beta_end,
                           warmup=p.warmup, lr_round=p.lr, lr_act=p.lr_act, keep=self.keep(), loss=p.loss)


@register_method("qdrop")
class QDrop(BRECQ):
    """QDrop: BRECQ with element-wise dropped activation quantization; drop = P(FP) (paper's p), keep_prob = official drop_prob.

    keep_prob = 1 - drop is the probability that an element keeps its quantized value (wimh966/QDrop's drop_prob)."""

    @dataclass(frozen=True)
    class Params(BRECQ.Params):
        drop: float = field(default=0.5, metadata={"help": "probability that an element is FP (the paper's p)"})
        keep_prob: float | None = field(default=None, metadata={
            "help": "the official code's drop_prob: probability of keeping the quantized value (= 1 - drop); "
                    "takes precedence over drop"})

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.keep_prob is not None:
                if not 0.0 < self.keep_prob <= 1.0:
                    raise ValueError(f"keep_prob={self.keep_prob} must be in (0, 1] (the official drop_prob: "
                                     f"the probability of keeping the quantized value)")
                if self.drop != QDrop.Params.drop and not math.isclose(self.drop, 1.0 - self.keep_prob, abs_tol=1e-12):
                    raise ValueError(f"drop={self.drop} and keep_prob={self.keep_prob} disagree (keep_prob = "
                                     f"1 - drop); give one of them")
                object.__setattr__(self, "drop", 1.0 - self.keep_prob)
            if not 0.0 <= self.drop < 1.0:
                raise ValueError(f"drop={self.drop} must be in [0, 1)")

    def keep(self) -> float:
        p = self.params
        return p.keep_prob if p.keep_prob is not None else 1.0 - p.drop
