"""A mixed-precision request (`--bits mixed:4`, or the matrix entry `{mixed: {like: 4, candidates: [...],
criterion: ...}}`) and the one function that turns it into per-layer bits: sensitivity, then the ILP.

`like: b` = at most the cost-model size and BOPs of uniform WbAb in the same scope; the scope's fixed-bit
layers (ptq4sr's 8-bit edge convs) keep their bits; every other quantized layer gets a (w, a) pair from the
candidates (a bare bit-width b means (b, b)).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.mixed.allocate import Allocation, CostTable, Pair, allocate, candidate_pairs
from bench.mixed.sensitivity import CONTEXTS, CRITERIA, SensitivityResult, SensitivitySettings, measure_sensitivity
from bench.quant.quantizer import MAX_BITS, MIN_BITS

DEFAULT_CANDIDATES = (2, 3, 4, 6, 8)
_KEYS = {"like", "candidates", "criterion", "context", "refine", "score_n", "score_patch"}


@dataclass(frozen=True)
class MixedSpec:
    like: int = 4
    candidates: tuple[Pair, ...] = candidate_pairs(DEFAULT_CANDIDATES)
    criterion: str = "mse"
    context: str = "context"
    refine: int = 0  # re-score around the allocation and solve again, up to this many times (mse in context)
    # The held-out score batch: score_n patches of score_patch x score_patch LR pixels (None: the calibration
    # batch's n and patch). Smaller than the calibration batch keeps a matrix cell's sensitivity affordable.
    score_n: int | None = None
    score_patch: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.like, bool) or not isinstance(self.like, int) or not MIN_BITS <= self.like <= MAX_BITS:
            raise ConfigError(f"mixed precision `like: {self.like!r}` must be a bit-width in {MIN_BITS}..{MAX_BITS} "
                              f"(the uniform WbAb whose size and BOPs are the budget)")
        object.__setattr__(self, "candidates", candidate_pairs(self.candidates))
        if self.criterion not in CRITERIA:
            raise ConfigError(f"mixed precision criterion {self.criterion!r}: use one of {', '.join(CRITERIA)}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"mixed precision context {self.context!r}: use one of {', '.join(CONTEXTS)}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, int) or self.refine < 0:
            raise ConfigError(f"mixed precision refine={self.refine!r} must be an integer >= 0")
        for name in ("score_n", "score_patch"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"mixed precision {name}={value!r} must be a positive integer (held-out score "
                                  f"patches; leave it out to use the calibration batch's)")

    def score_size(self, n: int, patch: int) -> tuple[int, int]:
        """(patches, patch size) of the held-out score batch, given the calibration batch's n and patch."""
        return self.score_n or n, self.score_patch or patch

    @property
    def tag(self) -> str:
        """e.g. "mixed4" (default settings) or "mixed4-hawq-v2"."""
        extra = [] if self.criterion == "mse" else [self.criterion]
        extra += [] if self.context == "context" else [self.context]
        extra += [f"r{self.refine}"] if self.refine else []
        extra += [] if self.candidates == candidate_pairs(DEFAULT_CANDIDATES) else \
            ["c" + ".".join(str(w) if w == a else f"{w}x{a}" for w, a in self.candidates)]
        if self.score_n is not None or self.score_patch is not None:
            extra += [f"s{self.score_n or ''}x{self.score_patch or ''}"]
        return "-".join([f"mixed{self.like}", *extra])

    def to_dict(self) -> dict:
        score = {k: v for k, v in (("score_n", self.score_n), ("score_patch", self.score_patch)) if v is not None}
        return {"like": self.like, "candidates": [list(c) for c in self.candidates], "criterion": self.criterion,
                "context": self.context, "refine": self.refine, **score}


def parse_mixed(value: object, where: str = "bits") -> MixedSpec | None:
    """`"mixed:4"` or `{"mixed": {"like": 4, ...}}` -> MixedSpec; anything else -> None (not a mixed entry)."""
    if isinstance(value, str) and value.strip().lower().startswith("mixed:"):
        text = value.split(":", 1)[1].strip()
        if not text.isdigit():
            raise ConfigError(f"bad bits {value!r} in `{where}`; write mixed:B with B the budget's uniform bits, "
                              f"e.g. mixed:4")
        return MixedSpec(like=int(text))
    if isinstance(value, Mapping) and set(value) == {"mixed"}:
        body = value["mixed"]
        if isinstance(body, int) and not isinstance(body, bool):
            return MixedSpec(like=body)
        if not isinstance(body, Mapping) or not set(body) <= _KEYS or "like" not in body:
            raise ConfigError(f"bad `mixed` entry {body!r} in `{where}`; write {{mixed: {{like: 4, candidates: "
                              f"[2, 3, 4, 6, 8], criterion: mse}}}} (keys: {', '.join(sorted(_KEYS))}; like required)")
        return MixedSpec(**{k: (tuple(v) if k == "candidates" else v) for k, v in body.items()})
    return None


def mixed_allocation(fp_model: nn.Module, model_name: str, scale: int, spec: MixedSpec, method: str,
                     params: dict, scope: str, calib_batch: torch.Tensor, score_batch: torch.Tensor, *,
                     train_dir: Path | None = None, device: str | torch.device = "cpu", seed: int = 0,
                     report: Callable[[str], None] | None = None,
                     refine: int | None = None) -> tuple[Allocation, SensitivityResult]:
    """Per-layer bits for `spec`: the method's sensitivity (cached) and the exact ILP at the budget.

    `refine` (default: spec.refine; criterion mse, context "context"): up to this many times, score every layer
    again with the others at the current allocation instead of uniform bits, and solve again (stops when the
    allocation repeats)."""
    from bench.mixed.sensitivity import method_calibrator
    settings = SensitivitySettings(method, dict(params), scope, spec.like, spec.candidates, spec.criterion,
                                   spec.context, seed=seed)
    calibrate = method_calibrator(fp_model, settings, calib_batch, train_dir, device)  # shared by the rounds
    sensitivity = measure_sensitivity(fp_model, model_name, scale, settings, calib_batch, score_batch,
                                      train_dir=train_dir, device=device, report=report, calibrate=calibrate)
    table = CostTable(fp_model, model_name, scale, scope, spec.candidates)
    budget = table.budget_like(spec.like)
    allocation = allocate(sensitivity.scores, table, budget)
    if spec.criterion != "mse" or spec.context != "context":
        return allocation, sensitivity
    for _ in range(spec.refine if refine is None else refine):
        settings = dataclasses.replace(settings, context_bits=allocation.layer_bits)
        sensitivity = measure_sensitivity(fp_model, model_name, scale, settings, calib_batch, score_batch,
                                          train_dir=train_dir, device=device, report=report, calibrate=calibrate)
        again = allocate(sensitivity.scores, table, budget)
        if again.layer_bits == allocation.layer_bits:
            break
        allocation = again
    return allocation, sensitivity


__all__ = ["DEFAULT_CANDIDATES", "MixedSpec", "mixed_allocation", "parse_mixed"]
