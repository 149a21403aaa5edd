"""CondiQuant (Liu et al., arXiv 2502.15478), as this project reads it: lower the condition number of every
quantized linear weight while keeping its output on the calibration activations, then 2DQuant (DOBI + DQC).

Why: in y = x W^T the activation quantization error dx reaches the output as dx W^T, which the spread of W's
singular values amplifies (kappa(W) = s_max / s_min); the calibration activations X of a transformer are close to
rank-deficient, so W can change along the directions X hardly excites without changing XW.

Per quantized nn.Linear (weight W, calibration input X, both FP; A = W^T so that Y = X A):
  * fidelity   E(A) = ||X (A - A0)||_F^2 / ||X A0||_F^2, through the Gram matrix G = X^T X (float64);
  * condition  R(A) = sum_i (s_i - mean(s))^2 / sum_i s0_i^2 over the singular values s of A (their spread:
    kappa falls as they move together);
  * proximal gradient, `pgd_iters` times: a gradient step on E with step 1/L (L = 2 lambda_max(G) / ||X A0||^2),
    then the closed-form proximal step of eta * rho * R: SVD A = U diag(s) V^T, s <- mean(s) + (s - mean(s)) /
    (1 + 2 eta rho / sum s0^2) (the mean is kept, the spread shrinks), A = U diag(s) V^T;
  * output restore (this project's addition, so that the fidelity holds as a bound): in G's eigenbasis the
    change A - A0 is put back to 0 along the most excited directions, as few as needed for sqrt(E) <= `tol`;
  * the layer keeps the new weight only if kappa went down (else it is left as it was, and recorded so).
Then DOBI bounds and DQC on the transformed copy (methods/twodquant.py, same parameters; the teacher is the
untouched FP model). The new weights are written with `rewrite_fp_tensor`, so a saved file stores them.

Where the paper's text is silent, these are our choices (docs/transformer-methods.md, "CondiQuant, as this project reads it"): the
form of R, rho, the iteration count, the restore step and `tol`, one calibration forward for all layers (the FP
inputs), and linear layers only: the paper transforms SwinIR-light's linear layers (its convolutions stay FP).
A model whose quantized layers hold no nn.Linear is refused by name.

Paper / official code / this project: Kai-Liu001/CondiQuant holds the README and figures only; its code was never
released (checked for issue 26), so this is the paper's idea in this project's own reading (above), with no
official code to measure against. The paper's Table 3 numbers in results/reference/condiquant-table3.csv match
the repository README's table.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext
from bench.quant.quantizer import FakeQuantizer
from bench.quant.surgery import rewrite_fp_tensor
from methods.base import PTQMethod
from methods.registry import register_method
from methods.twodquant import TwoDQuant

# The restore aims at 0.99 * tol: storing the new weight in float32 moves XW by ~1e-7 relative on its own.
_STORAGE_MARGIN = 0.99
_GRAM_ROWS = 1 << 14  # rows of X per float64 chunk of X^T X (bounded memory on 131,072-token activations)
# 2DQuant parameters that CondiQuant passes on to its DOBI + DQC stage unchanged
DQC_KEYS = ("preset", "batch", "iters", "lr", "K", "lam", "patch", "select", "seed")


@dataclass(frozen=True)
class LayerTransform:
    """What the transform did to one linear weight (measured on the calibration activations)."""
    weight: str              # parameter name in the quantized copy
    kappa_before: float
    kappa_after: float
    rel_change: float        # ||X (W' - W)^T||_F / ||X W^T||_F
    free_directions: int     # eigen-directions of X^T X left as the proximal gradient made them
    transformed: bool        # False: kappa did not go down, W is unchanged


# ------------------------------------------------------------------------------------------- linear algebra

def condition_number(matrix: torch.Tensor) -> float:
    s = torch.linalg.svdvals(matrix.detach().double())
    return float(s[0] / s[-1]) if s[-1] > 0 else math.inf


def _output_energy(d: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """||X D||_F^2 = trace(D^T G D) for a batch of D (B, in, out) and G (B, in, in)."""
    return torch.einsum("bio,bij,bjo->b", d, gram, d)


def relative_change(a: torch.Tensor, a0: torch.Tensor, gram: torch.Tensor) -> float:
    """||X (A - A0)||_F / ||X A0||_F from G = X^T X (one matrix)."""
    ratio = _output_energy((a - a0)[None], gram[None]) / _output_energy(a0[None], gram[None])
    return math.sqrt(max(float(ratio), 0.0))


def proximal_gradient(a0: torch.Tensor, gram: torch.Tensor, rho: float, iters: int) -> torch.Tensor:
    """`iters` steps of: gradient step on E (keeps XA near XA0), closed-form SVD proximal step on rho * R.
    a0 (in, out) or a batch (B, in, out) of layers of one shape, gram (in, in) or (B, in, in)."""
    single = a0.dim() == 2
    a0, gram = (a0[None], gram[None]) if single else (a0, gram)
    n0 = _output_energy(a0, gram)[:, None, None]
    eta = n0 / (2 * torch.linalg.eigvalsh(gram)[:, -1:, None])         # 1 / L per layer
    spread_scale = (torch.linalg.svdvals(a0) ** 2).sum(dim=1)[:, None]  # makes R scale-free
    shrink = 1.0 / (1.0 + 2.0 * eta[:, :, 0] * rho / spread_scale)       # (B, 1)
    a = a0.clone()
    for _ in range(iters):
        a = a - eta * (2.0 / n0) * (gram @ (a - a0))
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        mean = s.mean(dim=1, keepdim=True)
        a = u @ torch.diag_embed(mean + (s - mean) * shrink) @ vh
    return a[0] if single else a


def restore_outputs(a: torch.Tensor, a0: torch.Tensor, gram: torch.Tensor,
                    tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A0 + the change A - A0 kept only along the least excited eigen-directions of G, as many as keep
    ||X (A' - A0)|| / ||X A0|| <= tol; returns (A', number of directions kept free). Batched like
    `proximal_gradient`."""
    single = a0.dim() == 2
    a, a0, gram = (a[None], a0[None], gram[None]) if single else (a, a0, gram)
    g, q = torch.linalg.eigh(gram)                               # ascending eigenvalues
    d = q.transpose(1, 2) @ (a - a0)                             # the change, one row per eigen-direction
    n0 = _output_energy(a0, gram)[:, None]
    cost = torch.cumsum(g.clamp(min=0) * (d ** 2).sum(dim=2) / n0, dim=1)   # E of the k least excited rows
    free = (cost <= tol ** 2).sum(dim=1)
    keep = torch.arange(d.shape[1], device=d.device)[None, :] < free[:, None]
    restored = a0 + q @ (d * keep[:, :, None])
    return (restored[0], free[0]) if single else (restored, free)


def transform_weights(weights: list[torch.Tensor], grams: list[torch.Tensor], rho: float, iters: int,
                      tol: float) -> tuple[list[torch.Tensor], list[int]]:
    """New (out, in) weights of lower condition number with the same outputs on X within `tol` (float64);
    layers of one shape go through the iterations as one batch."""
    new: list[torch.Tensor | None] = [None] * len(weights)
    free: list[int] = [0] * len(weights)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, w in enumerate(weights):
        by_shape.setdefault(tuple(w.shape), []).append(i)
    for indices in by_shape.values():
        a0 = torch.stack([weights[i].detach().double().T for i in indices])
        gram = torch.stack([grams[i] for i in indices])
        a, kept = restore_outputs(proximal_gradient(a0, gram, rho, iters), a0, gram, tol)
        for j, i in enumerate(indices):
            new[i], free[i] = a[j].T.contiguous(), int(kept[j])
    return new, free


# --------------------------------------------------------------------------------------------- the model

def linear_layers(qmodel: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Quantized nn.Linear layers (a weight and an input quantizer), in module order."""
    return [(path, m) for path, m in qmodel.named_modules()
            if isinstance(m, nn.Linear) and isinstance(getattr(m, "input_quant", None), FakeQuantizer)
            and isinstance(getattr(m, "weight_quant", None), FakeQuantizer)]


def _gram(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    gram = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, rows.shape[0], _GRAM_ROWS):
        chunk = rows[start:start + _GRAM_ROWS].double()
        gram += chunk.T @ chunk
    return gram.cpu()


def gram_matrices(qmodel: nn.Module, batch: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """X^T X of the FP input of each named input quantizer, from one forward of `batch`."""
    grams: dict[str, torch.Tensor] = {}
    last: dict[str, object] = {"key": None, "gram": None}

    def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
        if name not in names:
            return
        key = (x.data_ptr(), tuple(x.shape), x._version)
        if key != last["key"]:  # q, k and v of a split linear see one tensor: one Gram matrix
            last["key"], last["gram"] = key, _gram(x)
        grams[name] = last["gram"]

    capture_activations(qmodel, batch, observe)
    return grams


@register_method("condiquant")
class CondiQuant(PTQMethod):
    """CondiQuant (project's reading): lower kappa(W) of every linear keeping XW (proximal gradient), then 2DQuant."""

    @dataclass(frozen=True)
    class Params:
        rho: float = 1e-2          # weight of the singular-value spread against the output change
        pgd_iters: int = 100       # proximal-gradient iterations per layer
        tol: float = 1e-4          # largest relative change of XW on the calibration activations
        preset: Literal["paper", "code"] = "paper"   # the DOBI + DQC stage, as 2dquant
        batch: int | None = None
        iters: int | None = None   # DQC iterations (None: the preset's)
        lr: float | None = None
        K: int = 100
        lam: float = 5.0
        patch: int = 64
        select: Literal["last", "val"] = "last"
        seed: int = 3407

        def __post_init__(self) -> None:
            if not self.rho > 0:
                raise ValueError(f"rho={self.rho} must be > 0")
            if self.pgd_iters < 1:
                raise ValueError(f"pgd_iters={self.pgd_iters} must be >= 1")
            if not 0 < self.tol < 1:
                raise ValueError(f"tol={self.tol} must be in (0, 1) (a relative change of XW)")

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self.dqc = TwoDQuant(**{k: getattr(self.params, k) for k in DQC_KEYS})  # validates them now
        self.layers: list[LayerTransform] = []

    def describe(self) -> dict:
        record = super().describe()
        done = [t for t in self.layers if t.transformed]
        record["transform"] = {
            "layers": len(self.layers), "transformed": len(done),
            "kappa_before_max": max((t.kappa_before for t in self.layers), default=None),
            "kappa_after_max": max((t.kappa_after for t in self.layers), default=None),
            "max_rel_change": max((t.rel_change for t in self.layers), default=None),
        }
        record["dqc"] = {"settings": self.dqc.describe()["settings"]}
        return record

    def _layers(self, qmodel: nn.Module) -> list[tuple[str, nn.Linear]]:
        layers = linear_layers(qmodel)
        if not layers:
            raise ConfigError(f"condiquant transforms the weights of quantized nn.Linear layers, and "
                              f"{type(qmodel).__name__} has none in scope {getattr(qmodel, 'quant_scope', '?')!r} "
                              f"(the paper transforms linear layers only; its convolutions stay FP); use a "
                              f"transformer model or another method")
        return layers

    @torch.no_grad()
    def transform(self, qmodel: nn.Module, ctx: CalibContext) -> list[LayerTransform]:
        """Rewrite the weight of every quantized linear of `qmodel` (see module docstring)."""
        p = self.params
        layers = self._layers(qmodel)
        grams = gram_matrices(qmodel, ctx.require_batch(), {f"{path}.input_quant" for path, _ in layers})
        weights = [layer.weight.detach().clone() for _, layer in layers]
        new, free = transform_weights(weights, [grams[f"{path}.input_quant"] for path, _ in layers], p.rho,
                                      p.pgd_iters, p.tol * _STORAGE_MARGIN)
        records = []
        for (path, layer), weight, w_new, kept in zip(layers, weights, new, free):
            before, after = condition_number(weight), condition_number(w_new.float())
            done = after < before
            if done:
                rewrite_fp_tensor(qmodel, f"{path}.weight", w_new)
            gram = grams[f"{path}.input_quant"]
            change = relative_change(layer.weight.detach().double().T, weight.double().T, gram) if done else 0.0
            records.append(LayerTransform(f"{path}.weight", before, after if done else before, change, kept, done))
        return records

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        self.layers = self.transform(qmodel, ctx)
        self.dqc.calibrate(qmodel, ctx)

    def layer_report(self) -> list[dict]:
        return [asdict(t) for t in self.layers]
