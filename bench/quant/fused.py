"""One-pass CPU kernels of the fake quantizer (spec §2.3, §2.4), compiled by TorchInductor.

The formula is six float32 elementwise ops (clip, shift, divide, round, scale, offset). Run as six torch kernels
they go through memory six times and, at two or more threads, open six OpenMP regions per call; on SwinIR-light
that made W4A4 inference ~2.4x FP (results/reference/speed.md). `torch.compile` fuses them into one loop that
reads each element once and writes it once, with the same IEEE operations in the same order:
  * no `-funsafe-math-optimizations` (so no x / s -> x * (1/s) rewrite) and `-ffp-contract=off` (so no fused
    multiply-add for s * round(q) + l): both options are pinned below, not left to Inductor's defaults;
  * round is Vectorized::round (round-half-to-even, as torch.round).
tests/test_fake_quant_fast.py checks bit equality on inputs built so that either rewrite would change a code.

Inductor needs a C++ compiler. Without one (or with BENCH_FUSED_FAKE_QUANT=0) `fused_fake_quantize` returns
None and the caller keeps its chunked torch ops, which give the same numbers, more slowly. The first call in a
process compiles (about 17 s on a 2-core machine with an empty cache; ~3 s once Inductor's on-disk cache holds
the kernel); later calls of any length reuse it (dynamic shapes).

`fused_ste_terms` is the training path's backward (bench.quant.quantizer._FakeQuantizeSTE): the per-element
terms whose sums are the bound gradients of spec §2.4, computed in one pass with autograd's own float32 ops for
the composite quantizer (the same IEEE operations, so the same values; the sums stay torch's, in torch's order).
"""
from __future__ import annotations

import logging
import os
import warnings

import torch

ENV_SWITCH = "BENCH_FUSED_FAKE_QUANT"
# Below this many elements the call overhead of a compiled graph (guards and wrappers, ~50 us) exceeds what
# fusion saves (measured on one thread: equal at 131,072 elements, 2.2x faster at 2M).
MIN_ELEMENTS = 1 << 17
# The training backward replaces ~12 torch ops with one call: it pays from ~16K elements (2 threads, measured
# with the sums: 250 -> 145 us at 16,384 elements, 608 -> 441 us at 122,880).
STE_MIN_ELEMENTS = 1 << 14
_INDUCTOR_OPTIONS = {"cpp.enable_unsafe_math_opt_flag": False, "cpp.enable_floating_point_contract_flag": "off"}

# Dynamo raises these when one more input pattern (a new stride order or rank) would exceed its recompile limit;
# the kernels already compiled stay in use for the patterns they serve.
_PER_CALL_FAILURES = ("FailOnRecompileLimitHit", "RecompileError")

_kernel = None
_ste_kernels: dict[str, object] = {}
_failed = False


def _fake_quantize_flat(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                        step: torch.Tensor) -> torch.Tensor:
    # the op order of `bench.quant.quantizer.fake_quantize`: s * round((clip(x, l, u) - l) / s) + l
    return step * torch.round((torch.clamp(x, lower, upper) - lower) / step) + lower


def ste_terms(grad: torch.Tensor, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
              step: torch.Tensor, parts: str = "all") -> tuple[torch.Tensor, ...]:
    """The fake quantizer's backward terms with torch's ops, in what autograd computes for
    step * (q + (round(q) - q).detach()) + l, q = (clip(x, l, u) - l) / s, node by node (MulBackward0,
    DivBackward0 and the clip's backward): the gradient reaching q is g * s, the one reaching the clip (g * s) / s;
    the step's terms are g * round(q) and -(g * s) * (q / s); the bounds' clip terms mask the clip's gradient with
    v <= l and v >= u.

    parts "all": (grad_x, grad_clip, g round(q), -(g s)(q / s), clip v <= l, clip v >= u); "bounds": the same
    without grad_x; "x": (grad_x,) alone, for a call whose bounds need no gradient (PTQ4SR's weight phase)."""
    grad_q = grad * step
    grad_clip = grad_q / step
    if parts == "x":
        return (grad_clip * ((x >= lower) & (x <= upper)),)
    q = (torch.minimum(torch.maximum(x, lower), upper) - lower) / step
    terms = (grad_clip, grad * torch.round(q), -grad_q * (q / step), grad_clip * (x <= lower), grad_clip * (x >= upper))
    if parts == "all":
        return (grad_clip * ((x >= lower) & (x <= upper)), *terms)
    return terms


# One function per set of parts, so that Dynamo keeps one graph for each without a guard between them.
def _ste_all(grad, x, lower, upper, step):
    return ste_terms(grad, x, lower, upper, step, "all")


def _ste_bounds(grad, x, lower, upper, step):
    return ste_terms(grad, x, lower, upper, step, "bounds")


def _ste_x(grad, x, lower, upper, step):
    return ste_terms(grad, x, lower, upper, step, "x")


_STE_FUNCTIONS = {"all": _ste_all, "bounds": _ste_bounds, "x": _ste_x}


def flat_alias(t: torch.Tensor) -> torch.Tensor:
    """A 1-D tensor on a contiguous `t`'s memory (0-dim for a 0-dim `t`) that is neither a view nor tracked by
    autograd.

    Dynamo guards on what it sees: a view (`t.reshape(-1)`, `t.detach()`) brings guards on its base's sizes and
    strides, and `requires_grad` one more; both made it recompile, or check slowly, for every new base. A plain
    alias of the same storage gives one kernel for every shape and cheap guards."""
    shape, stride = ((), ()) if t.dim() == 0 else ((t.numel(),), (1,))
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), shape, stride)


def enabled() -> bool:
    """False when the user switched the kernel off or it failed to build in this process."""
    return not _failed and os.environ.get(ENV_SWITCH, "1") != "0"


def _compile(fn):
    # Inductor warns about a missing CUDA toolkit on CPU-only machines; it does not concern a CPU kernel.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(fn, dynamic=True, fullgraph=True, options=_INDUCTOR_OPTIONS)


def _compiled():
    global _kernel
    if _kernel is None:
        _kernel = _compile(_fake_quantize_flat)
    return _kernel


def _ste_compiled(parts: str):
    if parts not in _ste_kernels:
        _ste_kernels[parts] = _compile(_STE_FUNCTIONS[parts])
    return _ste_kernels[parts]


def _run(kernel, *args):
    """kernel()(*args) without autograd, or None where the kernel cannot run (the caller then uses torch ops)."""
    global _failed
    try:
        with torch.no_grad():
            return kernel()(*args)
    except Exception as error:  # no compiler, an unsupported platform, a broken Inductor install
        if type(error).__name__ in _PER_CALL_FAILURES:
            return None  # this input pattern is one too many to compile (Dynamo's recompile limit): torch ops
        _failed = True
        warnings.warn(f"fused fake-quant kernel unavailable ({type(error).__name__}: {str(error)[:200]}); "
                      f"using torch ops (same numbers, slower). Set {ENV_SWITCH}=0 to skip the attempt.",
                      RuntimeWarning, stacklevel=3)
        return None


def fused_fake_quantize(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                        step: torch.Tensor) -> torch.Tensor | None:
    """s * round((clip(x, l, u) - l) / s) + l in one pass, for a float32 CPU tensor and 0-dim float32 bounds and
    step; None when the kernel is unavailable (the caller then uses torch ops).

    Pass a contiguous tensor flattened to 1-D (one compiled kernel serves every shape). A strided tensor (SwinIR's
    k^T and v operands) may be passed as it is: Inductor compiles one kernel per stride pattern, reads the view
    in place and gives the output the input's dimension order, as torch's elementwise ops do (tested)."""
    if not enabled() or x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() < MIN_ELEMENTS:
        return None
    # plain aliases of the bounds: a Parameter's requires_grad would be one more guard to recompile on
    return _run(_compiled, x, flat_alias(lower), flat_alias(upper), flat_alias(step))


def fused_ste_terms(grad: torch.Tensor, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor,
                    step: torch.Tensor, parts: str = "all") -> tuple[torch.Tensor, ...] | None:
    """`ste_terms` in one pass over contiguous float32 CPU tensors `grad` and `x` of the same shape (0-dim bounds
    and step), each term flat (1-D); None when the kernel is unavailable."""
    if (not enabled() or x.dtype != torch.float32 or grad.dtype != torch.float32 or x.device.type != "cpu"
            or grad.device.type != "cpu" or x.numel() < STE_MIN_ELEMENTS):
        return None
    return _run(lambda: _ste_compiled(parts), flat_alias(grad), flat_alias(x), flat_alias(lower),
                flat_alias(upper), flat_alias(step))
