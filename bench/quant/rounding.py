"""Learned rounding: a weight quantizer type whose per-element up/down rounding choice is learned (AdaRound).

Registered as quantizer type "learned-rounding". With q = (clip(w, l, u) - l) / s (the float32 ops of spec §2.3,
s = max((u - l) / N, 1e-12)) the quantized weight is

    w_q = s * clip(floor(q) + h, 0, N) + l

where h, per element, is
  * nearest (no rounding state yet): h = round(q) - floor(q), so w_q is exactly the uniform quantizer's value;
  * soft (while a method optimises V): h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), zeta = 1.1,
    gamma = -0.1 (AdaRound's rectified sigmoid), differentiable in V;
  * hard (after `harden()`): h = 1[V >= 0], a 0/1 choice, kept as a bool tensor (V is dropped).
The hard choice is the learned state: `quant_state()` stores it as packed bits (1 bit per weight), so
save_quantized/load_quantized give the same output bit for bit. `codes(w)` gives the integer codes
clip(floor(q) + h, 0, N) that a deployed model stores (bench/export/packed.py).

The type knows no method: a method calls `init_soft(w)`, trains `alpha` (= V), then `harden()`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from bench.quant.qtypes import register_quantizer_type
from bench.quant.quantizer import _MIN_STEP, WEIGHT, FakeQuantizer

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (AdaRound §4.2): h reaches exactly 0 and 1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with h(V) = h for h in (0, 1) (AdaRound's initialisation: h = the fractional part of w / s)."""
    p = (h - GAMMA) / (ZETA - GAMMA)
    return torch.log(p / (1.0 - p))


@register_quantizer_type("learned-rounding")
class LearnedRoundingQuantizer(FakeQuantizer):
    """Uniform weight quantizer (same bounds and grid) with a learned per-element rounding direction."""

    def __init__(self, bits: int, kind: str = WEIGHT, per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(bits, kind, per_channel_axis=per_channel_axis, channels=channels)
        if kind != WEIGHT:
            raise ValueError(f"learned rounding applies to weight quantizers, not {kind!r} ones")
        self.alpha: nn.Parameter | None = None  # V while soft
        # Non-persistent: the model's state_dict (and the packed export's FP tensors) must not carry it.
        self.register_buffer("round_up", None, persistent=False)

    # --------------------------------------------------------------------------------------------- state
    @property
    def mode(self) -> str:
        """"nearest", "soft" or "hard"."""
        if self.alpha is not None:
            return "soft"
        return "hard" if self.round_up is not None else "nearest"

    def _scaled(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(q, s, l) broadcast to w, with the float32 op order of fake_quantize (spec §2.3)."""
        lower, upper = self._broadcast(self.lower, w), self._broadcast(self.upper, w)
        step = torch.clamp((upper - lower) / self.levels, min=_MIN_STEP)
        return (torch.minimum(torch.maximum(w, lower), upper) - lower) / step, step, lower

    @torch.no_grad()
    def init_soft(self, weight: torch.Tensor) -> nn.Parameter:
        """Start soft rounding at h = frac(q) (AdaRound's init: the soft weight equals the clipped FP weight)."""
        if not self.calibrated:
            raise RuntimeError("set the weight quantizer's bounds before initialising its rounding")
        q, _, _ = self._scaled(weight.detach())
        rest = (q - torch.floor(q)).clamp(1e-4, 1.0 - 1e-4)  # finite V; h(V) == rest to float precision
        self.alpha = nn.Parameter(inverse_rectified_sigmoid(rest), requires_grad=False)
        self.round_up = None
        return self.alpha

    @torch.no_grad()
    def harden(self) -> None:
        """Fix h to 0/1 (V >= 0 rounds up, h(V) >= 0.5) and drop V."""
        if self.alpha is None:
            raise RuntimeError("harden() needs soft rounding (init_soft) first")
        self.round_up = self.alpha.detach() >= 0
        self.alpha = None
        self._cached = self._cache_key = None

    def soft_h(self) -> torch.Tensor:
        if self.alpha is None:
            raise RuntimeError("no soft rounding: call init_soft first")
        return rectified_sigmoid(self.alpha)

    def quant_state(self) -> dict[str, torch.Tensor]:
        if self.alpha is not None:
            raise RuntimeError("harden() the learned rounding before saving it")
        if self.round_up is None:
            return {}
        bits = np.packbits(self.round_up.detach().cpu().numpy().ravel(), bitorder="little")
        return {"round_up_bits": torch.from_numpy(bits),
                "shape": torch.tensor(list(self.round_up.shape), dtype=torch.int64)}

    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        if not state:
            self.alpha = self.round_up = None
            return
        if set(state) != {"round_up_bits", "shape"}:
            raise ValueError(f"learned-rounding state needs round_up_bits and shape, got {sorted(state)}")
        shape = [int(d) for d in state["shape"].tolist()]
        count = math.prod(shape)
        bits = np.unpackbits(state["round_up_bits"].numpy().astype(np.uint8), count=count, bitorder="little")
        if bits.size != count:
            raise ValueError(f"{bits.size} rounding bits for a weight of shape {tuple(shape)}")
        self.round_up = torch.from_numpy(bits.astype(bool)).reshape(shape).to(self.lower.device)
        self.alpha = None
        self._cached = self._cache_key = None

    # ------------------------------------------------------------------------------------------- forward
    def _h(self, q: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            return rectified_sigmoid(self.alpha)
        if self.round_up is not None:
            if self.round_up.shape != q.shape:
                raise RuntimeError(f"learned rounding of shape {tuple(self.round_up.shape)} applied to a weight of "
                                   f"shape {tuple(q.shape)}")
            return self.round_up.to(q.dtype)
        return torch.round(q) - torch.floor(q)  # nearest, half to even, as the uniform quantizer

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes clip(floor(q) + h, 0, N) as float32 (h hard or nearest)."""
        with torch.no_grad():
            if self.alpha is not None:
                raise RuntimeError("harden() the learned rounding before taking integer codes")
            q, _, _ = self._scaled(w.detach())
            return torch.clamp(torch.floor(q) + self._h(q), 0, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest" or self.observer is not None or not self.enabled:
            return super().forward(x)
        if not self.calibrated:
            raise RuntimeError("learned-rounding quantizer used before calibration")
        if self.alpha is not None:  # soft: gradient reaches V (the weight and bounds are frozen by the method)
            q, step, lower = self._scaled(x)
            return step * torch.clamp(torch.floor(q).detach() + rectified_sigmoid(self.alpha), 0, self.levels) + lower
        grad = torch.is_grad_enabled() and (x.requires_grad or self.lower.requires_grad or self.upper.requires_grad)
        if grad or self.training:
            return self._hard(x)
        # Eval-mode weight cache of FakeQuantizer, keyed on the rounding choice as well as the weight and bounds.
        key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, x.device, self.lower.data_ptr(),
               self.lower._version, self.upper.data_ptr(), self.upper._version, self.bits,
               self.round_up.data_ptr(), self.round_up._version)
        if key != self._cache_key:
            self._cached = self._hard(x)
            self._cache_key = key
        return self._cached

    def _hard(self, x: torch.Tensor) -> torch.Tensor:
        q, step, lower = self._scaled(x)
        return step * torch.clamp(torch.floor(q) + self._h(q), 0, self.levels) + lower


def learned_rounding_quantizers(module: nn.Module) -> list[tuple[str, LearnedRoundingQuantizer]]:
    """Every learned-rounding quantizer inside `module`, with its path."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, LearnedRoundingQuantizer)]
