"""PTQ4ViT (Yuan et al., ECCV 2022, arXiv 2111.12293): twin-uniform quantization of post-softmax and post-GELU
activations and a Hessian-guided search of every scaling factor.

Quantizers (b bits):
  * weights and ordinary activations: symmetric uniform with step D, levels D * {-2^(b-1), ..., 2^(b-1) - 1},
    written as the two-bound quantizer (l, u) = (-2^(b-1) D, (2^(b-1) - 1) D) (its step (u - l) / (2^b - 1) is D);
  * post-softmax maps (kind act_softmax): `twin-uniform` unsigned, R2 = [0, 1] with step 1 / (2^(b-1) - 1) as in
    the paper, R1's step 2^-m times smaller, m searched over 0..19 (the released code's split points 2^-m);
  * post-GELU inputs (kind act_gelu): `twin-uniform` signed, positive values in R2 (step D2 searched), negative
    ones in R1 with D1 = D2 / 2^m and m the largest shift whose R1 still covers the most negative calibration value
    (the released code fixes R1 to GELU's minimum, -0.16997; here the steps must differ by a power of two);
  * other layers (convolutions of a CNN+transformer scope): symmetric min/max steps (the code's MinMax base).
  See bench/quant/twin_uniform.py for the exact twin-uniform definition.

Search (paper §4.2, "Hessian guided metric"), per layer, for its weight and input (Linear) or its two operands
(attention BMM), alternately for `rounds` rounds, each operand over the step candidates
D = alpha * D0, alpha = alpha_min + i (alpha_max - alpha_min) / n, i = 0..n (D0 = max|v| / (2^(b-1) - 0.5),
the code's initial interval; defaults 0.01, 1.2, 100 as in the released configuration), the other operand
quantized with its current step. A candidate's score is the layer-output distance the paper derives from a
second-order expansion of the task loss with a diagonal Gauss-Newton Hessian:
    score = sum over outputs of (dL/dO)^2 * (O_hat - O)^2.
The task loss: SR calibration patches have no labels and the loss against the FP output has zero gradient at the
FP model (the same happens in the released code, whose KL target is the FP prediction: hahnyuan/PTQ4ViT#23). This
project uses L = 1/2 ||f(x) - y||^2 with y drawn from N(f(x), I), i.e. dL/dO = J^T eps with eps ~ N(0, I) drawn
once per patch (seeded): (dL/dO)^2 is then an unbiased estimate of the Gauss-Newton/Fisher diagonal of the L2
loss, the quantity the paper's approximation stands for. The FP forward/backward runs `chunk` patches at a time
with every quantizer off (the code's parallel calibration: each layer is searched against FP neighbours), and
keeps, per layer, `rows` random token rows of a Linear (input, output, gradient) or `slices` random
(window, head) matrices of a BMM, on which the candidates are scored.

Paper / official code / this project (hahnyuan/PTQ4ViT, issue 26): with the same gradient and rows the scale search
equals the official one to 1e-8. Twin-uniform follows the paper; the official post-softmax code adds the split to
every value above it (a bug, not reproduced). The official KL gradient is exactly zero (hahnyuan/PTQ4ViT#23), so
the Gauss-Newton estimate above replaces it. The `rows` = 2,048 sampled token rows (the official code scores every
row) move the 6-bit activation alpha in 2 of 3 seeds, output MSE +0.6 to +1 %.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from bench.errors import ConfigError
from bench.quant.layers import QuantLinear, QuantMatMul
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.quantizer import ACT_GELU, ACT_SOFTMAX, FakeQuantizer, fake_quantize
from bench.quant.surgery import quantizers, set_quant_enabled
from bench.quant.twin_uniform import codes_per_range, twin_quantize_values
from methods.base import PTQMethod
from methods.registry import register_method
from methods.transformer_ops import model_label

SOFTMAX_SHIFTS = tuple(range(20))  # split points 2^-m of the released code


@dataclass
class Operand:
    """One quantized operand of a layer: its quantizer, its sampled values, its full-tensor range."""
    name: str
    quantizer: FakeQuantizer
    sample: torch.Tensor
    low: float = math.inf
    high: float = -math.inf
    step: float | torch.Tensor = 0.0   # current symmetric step (uniform) or D2 (twin)
    shift: int = 0                     # twin-uniform only

    @property
    def twin(self) -> bool:
        return self.quantizer.kind in (ACT_SOFTMAX, ACT_GELU)


@dataclass
class LayerData:
    """What one quantized layer saw on the calibration batch (sampled) and the loss gradient at its output."""
    path: str
    module: nn.Module
    operands: list[list[torch.Tensor]] = field(default_factory=list)
    out: list[torch.Tensor] = field(default_factory=list)
    grad: list[torch.Tensor] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- capture

def _sample_rows(t: torch.Tensor, index: torch.Tensor, matrix: bool) -> torch.Tensor:
    flat = t.reshape(-1, *t.shape[-2:]) if matrix else t.reshape(-1, t.shape[-1])
    return flat[index].detach().clone()


def capture_layers(qmodel: nn.Module, batch: torch.Tensor, chunk: int, rows: int, slices: int,
                   generator: torch.Generator, progress: bool) -> dict[str, LayerData]:
    """FP forward + backward (dL/dO = J^T eps) of `batch`, `chunk` patches at a time, every quantizer off."""
    layers = {path: LayerData(path, m) for path, m in qmodel.named_modules() if isinstance(m, (QuantLinear, QuantMatMul))}
    chunks = list(range(0, batch.shape[0], chunk))
    per_chunk_rows, per_chunk_slices = -(-rows // len(chunks)), -(-slices // len(chunks))

    def hook_for(data: LayerData):
        matrix = isinstance(data.module, QuantMatMul)

        def hook(_module, inputs, output):
            count = output.reshape(-1, *output.shape[-2:]).shape[0] if matrix else output.reshape(-1, output.shape[-1]).shape[0]
            index = torch.randperm(count, generator=generator)[:per_chunk_slices if matrix else per_chunk_rows]
            operands = inputs[:2] if matrix else inputs[:1]
            if not data.low:
                data.low, data.high = [math.inf] * len(operands), [-math.inf] * len(operands)
            for i, t in enumerate(operands):  # full-tensor range: the initial step and the twin shift use it
                low, high = torch.aminmax(t.detach())
                data.low[i], data.high[i] = min(data.low[i], float(low)), max(data.high[i], float(high))
            data.operands.append([_sample_rows(t, index, matrix) for t in operands])
            data.out.append(_sample_rows(output, index, matrix))
            output.register_hook(lambda g: data.grad.append(_sample_rows(g, index, matrix)))
        return hook

    enabled = {name: q.enabled for name, q in quantizers(qmodel)}
    handles = [data.module.register_forward_hook(hook_for(data)) for data in layers.values()]
    set_quant_enabled(qmodel, False)
    qmodel.eval()
    try:
        for start in tqdm(chunks, desc="ptq4vit gradients", disable=not progress, leave=False):
            x = batch[start:start + chunk].clone().requires_grad_(True)
            with torch.enable_grad():
                out = qmodel(x)
                eps = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
                out.backward(eps)
    finally:
        for handle in handles:
            handle.remove()
        for name, q in quantizers(qmodel):
            q.enabled = enabled[name]
    return layers


# ------------------------------------------------------------------------------------------- quantizing

def _symmetric_bounds(step, bits: int):
    half = 2 ** (bits - 1)
    return -half * step, (half - 1) * step


@torch.no_grad()
def quantize_operand(op: Operand, values: torch.Tensor, step=None, shift: int | None = None) -> torch.Tensor:
    """values through op's quantizer at a candidate step (and shift), with the final quantizer's arithmetic."""
    step = op.step if step is None else step
    shift = op.shift if shift is None else shift
    bits = op.quantizer.bits
    if op.twin:
        upper = float(step) * codes_per_range(bits)
        return twin_quantize_values(values, upper, shift, bits, signed=op.quantizer.kind == ACT_GELU and op.low < 0)
    lower, upper = _symmetric_bounds(torch.as_tensor(step, dtype=values.dtype), bits)
    if lower.dim():  # per-channel weight: one step per output channel (axis 0)
        lower, upper = lower.view(-1, *[1] * (values.dim() - 1)), upper.view(-1, *[1] * (values.dim() - 1))
    return fake_quantize(values, lower, upper, bits)


def gelu_shift(step2: float, low: float, bits: int) -> int:
    """Largest m >= 0 with c * D2 / 2^m >= |most negative value|: R1 covers the negative values, finest step."""
    if low >= 0:
        return 0
    return max(0, int(math.floor(math.log2(codes_per_range(bits) * step2 / -low))))


def initial_step(op: Operand):
    """D0 = max|v| / (2^(b-1) - 0.5) (per output channel for a per-channel weight)."""
    half = 2 ** (op.quantizer.bits - 1)
    if op.quantizer.is_weight and op.quantizer.per_channel:
        return op.sample.detach().abs().flatten(1).amax(1).clamp(min=1e-12) / (half - 0.5)
    if op.quantizer.kind == ACT_SOFTMAX:
        return 1.0 / codes_per_range(op.quantizer.bits)  # R2 = [0, 1], fixed (paper)
    if op.quantizer.kind == ACT_GELU:
        return max(op.high, 1e-12) / codes_per_range(op.quantizer.bits)
    return max(abs(op.low), abs(op.high), 1e-12) / (half - 0.5)


# ----------------------------------------------------------------------------------------------- search

class LayerSearch:
    """Alternating Hessian-guided search of one layer's two operands."""

    def __init__(self, data: LayerData, alphas: np.ndarray) -> None:
        self.data, self.alphas = data, alphas
        m = data.module
        self.out = torch.cat(data.out)
        self.weight2 = torch.cat(data.grad).square()
        if isinstance(m, QuantLinear):
            x = Operand(f"{data.path}.input_quant", m.input_quant, torch.cat([o[0] for o in data.operands]),
                        data.low[0], data.high[0])
            w = Operand(f"{data.path}.weight_quant", m.weight_quant, m.weight.detach())
            w.low, w.high = float(w.sample.min()), float(w.sample.max())
            self.ops = [w, x]
        else:
            a = Operand(f"{data.path}.a_quant", m.a_quant, torch.cat([o[0] for o in data.operands]), data.low[0], data.high[0])
            b = Operand(f"{data.path}.b_quant", m.b_quant, torch.cat([o[1] for o in data.operands]), data.low[1], data.high[1])
            self.ops = [a, b]
        for op in self.ops:
            op.step = initial_step(op)
            op.shift = gelu_shift(float(op.step), op.low, op.quantizer.bits) if op.quantizer.kind == ACT_GELU else 0
        self.base = [op.step for op in self.ops]

    def forward(self, quantized: list[torch.Tensor]) -> torch.Tensor:
        m = self.data.module
        if isinstance(m, QuantLinear):
            w, x = quantized
            return nn.functional.linear(x, w, m.bias)
        return quantized[0] @ quantized[1]

    def score(self, quantized: list[torch.Tensor]) -> float:
        return float((self.weight2 * (self.forward(quantized) - self.out).square()).sum())

    def search(self, rounds: int) -> None:
        for _ in range(rounds):
            for i, op in enumerate(self.ops):
                other = [quantize_operand(o, o.sample) if j != i else None for j, o in enumerate(self.ops)]
                best, best_score = (op.step, op.shift), math.inf
                for step, shift in self.candidates(i):
                    other[i] = quantize_operand(op, op.sample, step, shift)
                    s = self.score(other)
                    if s < best_score:  # ties: the first candidate
                        best, best_score = (step, shift), s
                op.step, op.shift = best

    def candidates(self, i: int):
        op = self.ops[i]
        if op.quantizer.kind == ACT_SOFTMAX:
            return [(op.step, m) for m in SOFTMAX_SHIFTS]
        steps = [self.base[i] * float(a) for a in self.alphas]
        if op.quantizer.kind == ACT_GELU:
            return [(s, gelu_shift(float(s), op.low, op.quantizer.bits)) for s in steps]
        return [(s, 0) for s in steps]

    def apply(self, qmodel: nn.Module) -> list[tuple[str, str, float, int]]:
        """Write the chosen steps into the quantizers (twin types swapped in); returns what was set."""
        chosen = []
        for op in self.ops:
            bits = op.quantizer.bits
            if op.twin:
                new = make_quantizer("twin-uniform", op.quantizer)
                signed = op.quantizer.kind == ACT_GELU and op.low < 0
                new.set_twin(float(op.step) * codes_per_range(bits), op.shift, signed)
                replace_quantizer(qmodel, op.name, new)
            else:
                op.quantizer.set_bounds(*_symmetric_bounds(torch.as_tensor(op.step, dtype=torch.float64), bits))
            chosen.append((op.name, op.quantizer.kind, float(torch.as_tensor(op.step).float().mean()), op.shift))
        return chosen


def minmax_symmetric(q: FakeQuantizer, x: torch.Tensor) -> None:
    """The code's MinMax base for layers the search does not cover: D = max|v| / (2^(b-1) - 0.5)."""
    half = 2 ** (q.bits - 1)
    if q.per_channel:
        step = x.detach().abs().movedim(q.per_channel_axis, 0).flatten(1).amax(1).double() / (half - 0.5)
    else:
        step = torch.tensor(float(x.detach().abs().max()) / (half - 0.5), dtype=torch.float64)
    q.set_bounds(*_symmetric_bounds(step.clamp(min=1e-12), q.bits))


# ---------------------------------------------------------------------------------------------- the method

@register_method("ptq4vit")
class PTQ4ViT(PTQMethod):
    """PTQ4ViT: twin-uniform post-softmax/post-GELU activations, Hessian-guided search of every step."""

    @dataclass(frozen=True)
    class Params:
        rounds: int = 3            # alternating weight/activation search rounds (released code: 3)
        alpha_min: float = 0.01    # step candidates alpha * D0, alpha in [alpha_min, alpha_max] (code: 0.01, 1.2)
        alpha_max: float = 1.2
        candidates: int = 100      # n: n + 1 candidates (code: 100)
        rows: int = 2048           # token rows kept per Linear for the search
        slices: int = 64           # (window, head) matrices kept per attention BMM
        chunk: int = 2             # patches per forward/backward of the gradient pass

        def __post_init__(self) -> None:
            for name in ("rounds", "candidates", "rows", "slices", "chunk"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
            if not 0 < self.alpha_min < self.alpha_max:
                raise ValueError(f"need 0 < alpha_min < alpha_max, got {self.alpha_min}, {self.alpha_max}")

    def calibrate(self, qmodel: nn.Module, ctx) -> None:
        kinds = {q.kind for _, q in quantizers(qmodel)}
        if not kinds & {ACT_SOFTMAX, ACT_GELU}:
            raise ConfigError(f"ptq4vit needs post-softmax or post-GELU activations (an attention softmax or a GELU MLP "
                              f"in the quantization scope); {model_label(qmodel)} has none (use another method)")
        p = self.params
        batch = ctx.require_batch()
        generator = torch.Generator().manual_seed(ctx.seed)
        layers = capture_layers(qmodel, batch, p.chunk, p.rows, p.slices, generator, ctx.progress)
        alphas = p.alpha_min + np.arange(p.candidates + 1) * (p.alpha_max - p.alpha_min) / p.candidates
        self.chosen = []
        for data in tqdm(layers.values(), desc="ptq4vit search", disable=not ctx.progress, leave=False):
            search = LayerSearch(data, alphas)
            search.search(p.rounds)
            self.chosen += search.apply(qmodel)
        self._calibrate_rest(qmodel, batch)

    def _calibrate_rest(self, qmodel: nn.Module, batch: torch.Tensor) -> None:
        rest = {name for name, q in quantizers(qmodel) if not q.calibrated}
        if not rest:
            return
        from bench.quant.calibrate import capture_activations, capture_weights

        def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
            if name in rest:
                minmax_symmetric(q, x)
        capture_weights(qmodel, observe)
        capture_activations(qmodel, batch, observe)


__all__ = ["PTQ4ViT", "LayerData", "LayerSearch", "capture_layers", "gelu_shift"]
