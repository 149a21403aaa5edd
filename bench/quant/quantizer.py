"""`FakeQuantizer`: the two-bound asymmetric fake quantizer of spec §2.3 with the STE gradients of §2.4.

Forward (N = 2^b - 1):
    v_c = clip(v, l, u);  s = (u - l) / N;  v_q = s * round((v_c - l) / s) + l      (round = half-to-even)

Backward, per element (autograd differentiates through s, the -l shift and the +l offset; round is STE):
    region        dv_q/dv   dv_q/du                 dv_q/dl
    v < l           0         0                       1
    l <= v <= u     1         (round(q) - q) / N      (q - round(q)) / N        with q = (v_c - l) / s
    v > u           0         1                       0
At the two boundary points the clip counts the element for the bound as the released 2DQuant code does
(v <= l feeds l, v >= u feeds u, spec §2.4), which adds 1 to dv_q/dl at v == l and makes dv_q/du = 1 at v == u.

The quantizer holds no range rule: methods set `lower`/`upper` (MQBench's observer/fake-quant split).

Inference fast paths (the same numbers, bit for bit; tests/test_fake_quant_fast.py):
  * without autograd, activations are quantized by `fake_quantize_inference`: the same float32 ops in one
    compiled pass (`bench.quant.fused`), or applied in place one cache-sized chunk at a time where no compiler is
    available, so that a large activation goes through memory once instead of ~9 times;
  * a weight quantizer in eval mode without autograd keeps its quantized weight and reuses it until the weight
    or a bound changes (their version counters, storage and bit-width are the key); never in training mode.

Training path (fine-tuning): `fake_quantize` is one autograd node (`_FakeQuantizeSTE`) with the output and the
gradients of the autograd composite `fake_quantize_reference`, bit for bit (tests/test_fake_quant_ste.py).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from bench.quant import fused

MIN_BITS, MAX_BITS = 2, 8
WEIGHT = "weight"
ACT = "act"
ACT_SOFTMAX = "act_softmax"  # post-softmax attention map (exponential-like: one-sided DOBI in the paper)
ACT_GELU = "act_gelu"        # post-GELU input of fc2 (exponential-like as well)
KINDS = (WEIGHT, ACT, ACT_SOFTMAX, ACT_GELU)

# A zero-width range (constant tensor) would divide by zero: `set_bounds` widens it by this relative amount,
# and `forward` never lets the step fall below _MIN_STEP (bounds that cross while fine-tuning).
_DEGENERATE_WIDTH = 1e-6
_MIN_STEP = 1e-12
# Elements per chunk of the inference fast path: 1 MB of float32, resident in L2 across the chunk's six ops.
_INFERENCE_CHUNK = 1 << 18

# "0" runs the autograd composite of spec §2.3 in training (the oracle) instead of the one-node path.
STE_SWITCH = "BENCH_FAKE_QUANT_STE"

Observer = Callable[[torch.Tensor], None]


class _ClipWithBoundGrads(torch.autograd.Function):
    """clip(v, l, u) whose backward routes the gradient of clipped elements to the bound (spec §2.4)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(v, lower, upper)
        return torch.minimum(torch.maximum(v, lower), upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        v, lower, upper = ctx.saved_tensors
        grad_v = grad_l = grad_u = None
        if ctx.needs_input_grad[0]:
            grad_v = grad * ((v >= lower) & (v <= upper))
        if ctx.needs_input_grad[1]:
            grad_l = (grad * (v <= lower)).sum_to_size(lower.shape)
        if ctx.needs_input_grad[2]:
            grad_u = (grad * (v >= upper)).sum_to_size(upper.shape)
        return grad_v, grad_l, grad_u


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    # Value round(x), gradient 1: the straight-through estimator.
    return x + (torch.round(x) - x).detach()


def _scale_grad(p: torch.Tensor, g: float) -> torch.Tensor:
    # Same value as p (p - p is exactly 0), gradient multiplied by g (LSQ's grad_scale).
    detached = p.detach()
    return (p - detached) * g + detached


def levels(bits: int) -> int:
    """N = 2^b - 1 (so 2^b quantization levels)."""
    return 2 ** bits - 1


def check_bits(bits: int, what: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return bits


class FakeQuantizer(nn.Module):
    """Two-bound fake quantizer (per tensor, or per channel along `per_channel_axis` for weights).

    Attributes:
        bits: bit-width b (2..8). kind: "weight", "act", "act_softmax" or "act_gelu".
        lower, upper: nn.Parameter bounds; scalars, or vectors of `channels` entries when per-channel.
        enabled: False makes the quantizer the identity.
        calibrated: set by `set_bounds`; an enabled, uncalibrated quantizer refuses to run.
        observer: if set, `forward` calls `observer(x)` and returns x unquantized (calibration capture).
        grad_scale: optional factor on the gradient reaching the bounds (PTQ4SR's LSQ factor); None = 1.

    Other quantizer types (bench/quant/qtypes.py) subclass this one: the same constructor, bounds, `kind` tags and
    observer, a different `quant_type` and forward. State beyond (lower, upper) that a method learns (a
    per-element rounding choice, a type's own parameters) goes through `quant_state()` / `load_quant_state()`,
    which save_quantized/load_quantized store with the bounds.
    """

    quant_type: ClassVar[str] = "uniform"

    def __init__(self, bits: int, kind: str = ACT, per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown quantizer kind {kind!r}; use one of {', '.join(KINDS)}")
        if (per_channel_axis is None) != (channels is None):
            raise ValueError("per-channel quantizers need both per_channel_axis and channels")
        self.bits = check_bits(bits)
        self.kind = kind
        self.per_channel_axis = per_channel_axis
        shape = () if channels is None else (channels,)
        self.lower = nn.Parameter(torch.zeros(shape))
        self.upper = nn.Parameter(torch.ones(shape))
        self.enabled = True
        self.calibrated = False
        self.observer: Observer | None = None
        self.grad_scale: float | None = None
        self._cache_key: tuple | None = None
        self._cached: torch.Tensor | None = None

    # ----------------------------------------------------------------------------------------- properties
    @property
    def is_weight(self) -> bool:
        return self.kind == WEIGHT

    @property
    def levels(self) -> int:
        return levels(self.bits)

    @property
    def per_channel(self) -> bool:
        return self.per_channel_axis is not None

    # ---------------------------------------------------------------------------------------------- bounds
    @torch.no_grad()
    def set_bounds(self, lower, upper) -> None:
        """Set (l, u) and mark the quantizer calibrated. Rejects non-finite values and l > u; a zero-width
        range (constant tensor) is widened to [l, l + 1e-6 * max(1, |l|)] so that the step is never 0."""
        lower, upper = self._as_bound(lower), self._as_bound(upper)
        if not (torch.isfinite(lower).all() and torch.isfinite(upper).all()):
            raise ValueError(f"non-finite quantizer bounds l={lower.tolist()}, u={upper.tolist()}")
        if (lower > upper).any():
            raise ValueError(f"quantizer bounds need l <= u, got l={lower.tolist()}, u={upper.tolist()}")
        width = _DEGENERATE_WIDTH * torch.clamp(lower.abs(), min=1.0)
        upper = torch.where(upper - lower < width, lower + width, upper)
        self.lower.copy_(lower.to(self.lower.dtype))
        self.upper.copy_(upper.to(self.upper.dtype))
        # float32 rounding can still collapse a tiny range: make sure u > l holds in storage.
        collapsed = self.upper <= self.lower
        if collapsed.any():
            self.upper.copy_(torch.where(collapsed, torch.nextafter(self.lower, self.lower + 1), self.upper))
        self.calibrated = True

    def _as_bound(self, value) -> torch.Tensor:
        # float64 for the checks; a scalar is broadcast to every channel of a per-channel quantizer
        t = torch.as_tensor(value, dtype=torch.float64, device=self.lower.device)
        return t.expand(self.lower.shape).clone() if t.numel() == 1 else t.reshape(self.lower.shape)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) detached copies."""
        return self.lower.detach().clone(), self.upper.detach().clone()

    def _broadcast(self, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.per_channel_axis is None:
            return p
        shape = [1] * x.dim()
        shape[self.per_channel_axis] = -1
        return p.view(shape)

    # --------------------------------------------------------------------------------------------- forward
    def passes_through(self, x: torch.Tensor) -> bool:
        """True when forward must return x unchanged: calibration capture (the observer sees x) or disabled.
        Raises if an enabled quantizer has no bounds yet. Every quantizer type starts its forward with it."""
        if self.observer is not None:
            self.observer(x)
            return True
        if not self.enabled:
            return True
        if not self.calibrated:
            raise RuntimeError(f"{self.quant_type} {self.kind} quantizer ({self.bits}-bit) used before calibration: "
                               f"calibrate the quantized model with a method first")
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passes_through(x):
            return x
        if not (torch.is_grad_enabled() and (x.requires_grad or self.lower.requires_grad or self.upper.requires_grad)):
            return self._forward_inference(x)
        lower, upper = self.lower, self.upper
        if self.grad_scale is not None:
            lower, upper = _scale_grad(lower, self.grad_scale), _scale_grad(upper, self.grad_scale)
        lower, upper = self._broadcast(lower, x), self._broadcast(upper, x)
        return fake_quantize(x, lower, upper, self.bits)

    def _forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """No autograd: the fast paths (same values as `fake_quantize`; grad_scale changes no value)."""
        if not self.is_weight or self.training:
            self._cached = self._cache_key = None
            return fake_quantize_inference(x, self._broadcast(self.lower, x), self._broadcast(self.upper, x), self.bits)
        key = (x.data_ptr(), x._version, tuple(x.shape), x.dtype, x.device, self.lower.data_ptr(), self.lower._version,
               self.upper.data_ptr(), self.upper._version, self.bits)
        if key != self._cache_key:
            self._cached = fake_quantize_inference(x, self._broadcast(self.lower, x), self._broadcast(self.upper, x),
                                                   self.bits)
            self._cache_key = key
        return self._cached

    def _apply(self, fn, recurse=True):
        # .to(), .cuda(), .half() ...: the cached weight belongs to the old tensors
        self._cached = self._cache_key = None
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__()  # deepcopy/pickle: no stale cache travels with the copy
        return {**state, "_cached": None, "_cache_key": None}

    # ------------------------------------------------------------------------------------- saved state
    def quant_state(self) -> dict[str, torch.Tensor]:
        """Learned state besides the bounds, as CPU tensors (saved by save_quantized; {} for the plain type)."""
        return {}

    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `quant_state` returned (load_quantized calls it after copying the bounds)."""
        if state:
            raise ValueError(f"{type(self).__name__} has no saved state, got {sorted(state)}")

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes round((clip(w, l, u) - l) / s) in 0..N as float32, with the ops of `fake_quantize`
        (deployment stores these; a quantizer type with its own rounding overrides this)."""
        lower, upper = self._broadcast(self.lower.detach(), w), self._broadcast(self.upper.detach(), w)
        step = torch.clamp((upper - lower) / self.levels, min=_MIN_STEP)
        return torch.round((torch.minimum(torch.maximum(w.detach(), lower), upper) - lower) / step)

    def extra_repr(self) -> str:
        where = "per-tensor" if self.per_channel_axis is None else f"per-channel(axis={self.per_channel_axis})"
        return (f"type={self.quant_type}, bits={self.bits}, kind={self.kind}, {where}, enabled={self.enabled}, "
                f"calibrated={self.calibrated}")


def fake_quantize(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """Spec §2.3 with the gradients of §2.4; `lower`/`upper` broadcast against x.

    The values and gradients are those of `fake_quantize_reference`, bit for bit, with far fewer passes over
    memory (`_FakeQuantizeSTE`); BENCH_FAKE_QUANT_STE=0 runs the reference composite instead."""
    n = levels(bits)
    step = torch.clamp((upper - lower) / n, min=_MIN_STEP)
    if os.environ.get(STE_SWITCH, "1") == "0":
        return _reference_from_step(x, lower, upper, step)
    # lower three times: its three terms reach autograd's buffer one by one, as the composite's nodes delivered them
    return _FakeQuantizeSTE.apply(x, lower, lower, lower, upper, step)


def fake_quantize_reference(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """The composite of spec §2.3 with autograd differentiating through it (the gradients of §2.4): the test
    oracle of `fake_quantize`, and its code before the one-pass training path."""
    n = levels(bits)
    step = torch.clamp((upper - lower) / n, min=_MIN_STEP)
    return _reference_from_step(x, lower, upper, step)


def _reference_from_step(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    clipped = _ClipWithBoundGrads.apply(x, lower, upper)
    return step * _round_ste((clipped - lower) / step) + lower


class _FakeQuantizeSTE(torch.autograd.Function):
    """`_reference_from_step` as one autograd node: the same output and the same gradients, bit for bit.

    The composite records ~10 autograd nodes per call and ~25 elementwise passes in its backward; most of a
    fine-tuning step went there (results/reference/speed.md). This node computes its forward with the inference
    kernel (q + (round(q) - q) is exactly round(q) for 0 <= q <= 255, so the values agree) and its backward from
    the saved input with the composite's own float32 operations (`bench.quant.fused.fused_ste_terms`, in one pass
    where it applies, else the same ops in torch). Each bound gradient keeps the composite's reductions and
    their order of accumulation:
      * d/dl: sum(g), sum(-(g s) / s) and sum(clip term, v <= l), the composite's AddBackward, SubBackward and clip
        contributions, in the order its engine delivered them. `lower` is passed three times, so the engine adds
        the three terms to what its buffer already holds one by one (the buffer is not empty when a quantizer runs
        more than once per forward, as in CARN-M's shared blocks). The step's own path (d/ds = sum(g round(q)) +
        sum(-(g s)(q / s)), then through the clamp and (u - l) / N) stays outside, recorded by autograd as before,
        and arrives last, as it does for the composite;
      * d/du = sum(clip term, v >= u), then the step's path.
    tests/test_fake_quant_ste.py checks equality with the composite on tensors and on real fine-tuning runs.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, lower: torch.Tensor, _lower_shift: torch.Tensor, _lower_clip: torch.Tensor,
                upper: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, lower, upper, step)
        return _not_a_view(_inference_values(x, lower.detach(), upper.detach(), step.detach()))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, lower, upper, step = ctx.saved_tensors
        need_x, need_lower, _, _, need_upper, need_step = ctx.needs_input_grad
        parts = ("all" if need_x else "bounds") if need_lower or need_upper or need_step else "x"
        terms = _ste_terms(grad, x, lower, upper, step, parts)
        grad_x = terms[0].view(x.shape) if need_x else None  # the one-pass kernel's terms are flat
        if parts == "x":
            return grad_x, None, None, None, None, None
        grad_clip, p_round, p_step, p_lower, p_upper = terms[-5:]
        lower_offset = lower_shift = lower_clip = grad_upper = grad_step = None
        if need_lower:  # + l, - l (sum(-a) = -sum(a) exactly), clip
            lower_offset = grad.sum_to_size(lower.shape)
            lower_shift = -grad_clip.sum_to_size(lower.shape)
            lower_clip = p_lower.sum_to_size(lower.shape)
        if need_upper:
            grad_upper = p_upper.sum_to_size(upper.shape)
        if need_step:
            grad_step = p_round.sum_to_size(step.shape) + p_step.sum_to_size(step.shape)
        return grad_x, lower_offset, lower_shift, lower_clip, grad_upper, grad_step


def _ste_terms(grad: torch.Tensor, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor,
               parts: str) -> tuple[torch.Tensor, ...]:
    """`fused.ste_terms(..., parts)`. A sum's value depends on the memory order of what it sums, and the layout of
    grad_x on what runs after it: the one-pass kernel (flat, contiguous terms) serves calls where torch's own ops
    would give contiguous terms; the others (per-channel bounds, layouts whose terms torch would lay out
    otherwise) take the same ops in torch."""
    if lower.dim() == 0 and upper.dim() == 0 and grad.is_contiguous() and _contiguous_terms(grad, x):
        terms = fused.fused_ste_terms(grad, x.contiguous(), lower, upper, step, parts)
        if terms is not None:
            return terms
    return fused.ste_terms(grad, x, lower, upper, step, parts)


_CONTIGUOUS_TERMS: dict[tuple, bool] = {}


def _contiguous_terms(grad: torch.Tensor, x: torch.Tensor) -> bool:
    """True when torch's ops for the backward terms give contiguous tensors for these layouts of grad and x
    (found once per layout on meta tensors, which follow the same stride rules without computing)."""
    key = (tuple(x.shape), x.stride(), tuple(grad.shape), grad.stride(), x.dtype, grad.dtype)
    known = _CONTIGUOUS_TERMS.get(key)
    if known is None:
        if grad.shape != x.shape:
            known = False
        else:
            meta_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
            meta_grad = torch.empty_strided(grad.shape, grad.stride(), dtype=grad.dtype, device="meta")
            bound = torch.zeros((), dtype=x.dtype, device="meta")
            known = all(t.is_contiguous() for t in fused.ste_terms(meta_grad, meta_x, bound, bound, bound, "all"))
        _CONTIGUOUS_TERMS[key] = known
    return known


@torch.no_grad()
def fake_quantize_inference(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bits: int) -> torch.Tensor:
    """`fake_quantize` without autograd, computing the same float32 numbers with fewer passes over memory.

    Per-tensor bounds on CPU: the clip, shift, division, rounding, scaling and offset of spec §2.3 in one pass
    (`bench.quant.fused`, TorchInductor), or, where that kernel is unavailable or the tensor is small, in place on
    one output buffer chunk by chunk; the output has x's strides. Per-channel bounds and CUDA take the plain
    expression.
    """
    n = levels(bits)
    return _inference_values(x, lower, upper, torch.clamp((upper - lower) / n, min=_MIN_STEP))


def _not_a_view(t: torch.Tensor) -> torch.Tensor:
    """`t`'s memory as a tensor that is not a view. A custom Function's output that is a view of a tensor made
    inside it may not be modified in place, and the deploy scope quantizes conv outputs that IMDN's in-place
    LeakyReLU then overwrites (PTQ4SR's Pac in the deploy scope failed on it). No copy: same storage and strides."""
    if not t._is_view():
        return t
    out = torch.empty((0,), dtype=t.dtype, device=t.device)
    return out.set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def _inference_values(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    if lower.numel() != 1 or x.device.type != "cpu":
        return _plain(x, lower, upper, step)
    lower, upper, step = lower.to(x.dtype), upper.to(x.dtype), step.to(x.dtype)
    # The output has x's strides, as the reference's elementwise ops give it: a downstream conv picks its kernel
    # by layout, and a different layout there would change the model's numbers. The fused kernel keeps the
    # dimension order of a strided x itself; the chunked ops work on x's memory in order (any permutation of a
    # dense tensor: NCHW, channels-last, SwinIR's k^T). (A contiguous x may carry odd strides on size-1 dims,
    # e.g. a channel slice of a batch of one: the output is then plainly contiguous, as the reference's is.)
    if x.is_contiguous():
        flat = fused.fused_fake_quantize(fused.flat_alias(x), lower, upper, step)  # one kernel for every shape
        if flat is not None:
            return flat.view(x.shape)
        return _chunked(x.reshape(-1), lower, upper, step).view(x.shape)
    direct = fused.fused_fake_quantize(x, lower, upper, step)  # reads the strided view in place
    if direct is not None:
        return direct
    # dims from outermost to innermost memory order, size-1 dims outermost (as TensorIterator lays out outputs)
    order = sorted(range(x.dim()), key=lambda d: (x.shape[d] != 1, -x.stride(d)))
    dense = x.permute(order)
    if not dense.is_contiguous():
        return _plain(x, lower, upper, step)
    inverse = [order.index(d) for d in range(x.dim())]
    return _chunked(dense.reshape(-1), lower, upper, step).view(dense.shape).permute(inverse)


def _plain(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    return step * torch.round((torch.clamp(x, lower, upper) - lower) / step) + lower


def _chunked(flat: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The ops of spec §2.3 in place on one output buffer, one cache-sized chunk at a time (1-D contiguous input).
    Python-float clamp bounds take torch's vectorised scalar kernel (clamp with tensor bounds is ~10x slower); a
    float32 bound converted to float and back is the same number."""
    lo, hi = float(lower), float(upper)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), _INFERENCE_CHUNK):
        chunk = out[start:start + _INFERENCE_CHUNK]
        torch.clamp(flat[start:start + _INFERENCE_CHUNK], lo, hi, out=chunk)
        chunk.sub_(lower).div_(step).round_().mul_(step).add_(lower)
    return out


def fake_quantize_values(x: torch.Tensor, lower: float, upper: float, bits: int) -> torch.Tensor:
    """No-grad forward of `fake_quantize` for float bounds (used by range searches and tests)."""
    with torch.no_grad():
        lo = torch.tensor(lower, dtype=x.dtype, device=x.device)
        hi = torch.tensor(upper, dtype=x.dtype, device=x.device)
        return fake_quantize(x, lo, hi, bits)


def lsq_grad_scale(numel: int, bits: int) -> float:
    """PTQ4SR's bound gradient factor g = 1 / sqrt(numel(x0) * (2^(b-1) - 1)) (spec §4.4)."""
    return 1.0 / math.sqrt(numel * (2 ** (bits - 1) - 1))
