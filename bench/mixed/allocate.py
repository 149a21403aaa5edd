"""Bit allocation by integer linear programming (HAWQ-V3's formulation) over the project's cost model.

One binary x[l, c] per allocatable layer l and candidate pair c = (w_bits, a_bits) (weight and activation bits
are chosen together: a candidate list [2, 3, 4] means the pairs (2, 2), (3, 3), (4, 4); explicit pairs are
accepted too). The ILP

    minimise   sum_{l,c} s[l, c] x[l, c]                       (summed sensitivity)
    subject to sum_c x[l, c] = 1                  for every l   (exactly one choice per layer)
               size(x)  <= budget.size_bytes                    (the cost model's model size)
               bops(x)  <= budget.bops                          (the cost model's BOPs, paper rule)

is solved exactly by `scipy.optimize.milp` (HiGHS branch and bound).

Both costs are read from `bench.cost`, not re-derived: for each candidate the model is quantized with every
allocatable layer at that pair, and each layer's priced `LayerCount` (its operand bits as the cost model sees
them) is taken from there. The model size is a sum over layers plus terms that do not depend on bits, and the
BOPs are linear in each layer's MAC factor (also under a paper MAC rule, which rescales each category), so an
allocation's cost is the base cost plus each layer's change: exact for the size (integers), exact up to float
rounding for the BOPs. `Allocation` carries the cost of the assembled layer list, which `CostTable.cost` computes
with the cost model's own CostReport.

Layers the scope gives fixed bits (ptq4sr's 8-bit edge convs) keep them and are not allocated. This module
knows no method and no sensitivity criterion: scores come in as numbers.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch.nn as nn

from bench.cost import CostReport, LayerCount, analyze, count_layer_macs
from bench.errors import BenchError, ConfigError
from bench.quant.quantizer import MAX_BITS, MIN_BITS
from bench.quant.surgery import QuantConfig, quantize_model, quantized_layers

Pair = tuple[int, int]
BOPS_RULE = "paper"  # the rule of the records' bops_speedup
# The BOPs budget is a float sum; the constraint leaves this relative margin so float rounding in the solver
# never lets the assembled allocation exceed it.
_BOPS_MARGIN = 1e-9


def candidate_pairs(candidates: Iterable[int | Sequence[int]]) -> tuple[Pair, ...]:
    """[2, 3, (4, 8)] -> ((2, 2), (3, 3), (4, 8)): a bare bit-width means the same weight and activation bits."""
    pairs = []
    for c in candidates:
        pair = (c, c) if isinstance(c, int) and not isinstance(c, bool) else tuple(c)
        if len(pair) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and MIN_BITS <= b <= MAX_BITS
                                     for b in pair):
            raise ConfigError(f"mixed-precision candidate {c!r} is not a bit-width or a (w, a) pair of bit-widths "
                              f"in {MIN_BITS}..{MAX_BITS}")
        if pair not in pairs:
            pairs.append(pair)
    if not pairs:
        raise ConfigError("mixed precision needs at least one candidate bit-width, e.g. candidates: [2, 3, 4, 6, 8]")
    return tuple(pairs)


@dataclass(frozen=True)
class Budget:
    """At most this cost-model size (bytes) and these BOPs (MACs charged w*a/32^2, paper rule)."""
    size_bytes: int
    bops: float
    label: str = ""


@dataclass(frozen=True)
class Allocation:
    """The chosen (w_bits, a_bits) of every allocatable layer, with its summed score and its cost."""
    layer_bits: dict[str, Pair]
    objective: float
    size_bytes: int
    bops: float
    budget: Budget

    def to_dict(self) -> dict:
        return {"layer_bits": {k: list(v) for k, v in self.layer_bits.items()}, "objective": self.objective,
                "size_bytes": self.size_bytes, "bops": self.bops,
                "budget": {"size_bytes": self.budget.size_bytes, "bops": self.budget.bops,
                           "label": self.budget.label}}


class CostTable:
    """Each allocatable layer's priced LayerCount at each candidate, and the cost of any assembled allocation.

    `base_bits`: the uniform bits of the layers left out of an allocation (and of the budget's reference).
    """

    def __init__(self, fp_model: nn.Module, model_name: str, scale: int, scope: str, candidates: Sequence[Pair],
                 lr_size: tuple[int, int] = (128, 128)) -> None:
        self.fp_model, self.model_name, self.scale, self.scope = fp_model, model_name, scale, scope
        self.lr_size = tuple(lr_size)
        self.candidates = tuple(candidates)
        self.layers = [layer.path for layer in quantized_layers(fp_model, scope) if layer.fixed_bits is None]
        if not self.layers:
            raise ConfigError(f"scope {scope!r} leaves no layer of {model_name} for mixed precision to allocate")
        self._counts = count_layer_macs(fp_model, self.lr_size)
        self._names = [c.name for c in self._counts]
        missing = [p for p in self.layers if p not in self._names]
        if missing:  # a wrapped layer the cost model does not count (never called in forward)
            raise ConfigError(f"the cost model counts no MACs for layer {missing[0]!r} of {model_name}; it cannot be "
                              f"allocated bits")
        self._priced: dict[Pair, CostReport] = {}
        for pair in self.candidates:
            self._priced[pair] = self.uniform_report(pair)

    def uniform_report(self, pair: Pair) -> CostReport:
        """The cost model's report of the scope at uniform `pair` (fixed-bit layers at their own bits)."""
        qmodel = quantize_model(self.fp_model, QuantConfig(pair[0], pair[1], self.scope))
        return analyze(self.fp_model, self.model_name, self.scale, qmodel, self.lr_size, self._counts)

    def budget_like(self, bits: int | Pair) -> Budget:
        """The size and BOPs of uniform W{bits}A{bits} in the same scope."""
        pair = candidate_pairs([bits])[0]
        report = self.uniform_report(pair)
        return Budget(report.size_bytes, report.bops(BOPS_RULE), f"w{pair[0]}a{pair[1]}")

    def _layer_count(self, path: str, pair: Pair) -> LayerCount:
        report = self._priced.get(pair)
        if report is None:
            report = self._priced[pair] = self.uniform_report(pair)
        return report.layers[self._names.index(path)]

    def report(self, layer_bits: Mapping[str, Pair]) -> CostReport:
        """The cost model's report of an allocation (every allocatable layer must be in `layer_bits`)."""
        base = self._priced[self.candidates[0]]
        layers = list(base.layers)
        for path in self.layers:
            layers[self._names.index(path)] = self._layer_count(path, tuple(layer_bits[path]))
        return dataclasses.replace(base, layers=layers)

    def cost(self, layer_bits: Mapping[str, Pair]) -> tuple[int, float]:
        report = self.report(layer_bits)
        return report.size_bytes, report.bops(BOPS_RULE)

    def deltas(self) -> tuple[np.ndarray, np.ndarray, int, float]:
        """(size (L, C), bops (L, C), base size, base bops): the cost of an allocation is the base plus the
        chosen entry of each row; the base is every layer at the first candidate."""
        base = {path: self.candidates[0] for path in self.layers}
        size0, bops0 = self.cost(base)
        size = np.zeros((len(self.layers), len(self.candidates)), dtype=np.int64)
        bops = np.zeros(size.shape)
        for i, path in enumerate(self.layers):
            for j, pair in enumerate(self.candidates):
                s, b = self.cost({**base, path: pair})
                size[i, j], bops[i, j] = s - size0, b - bops0
        return size, bops, size0, bops0


def _milp():
    try:
        from scipy.optimize import Bounds, LinearConstraint, milp
    except ImportError:
        raise BenchError("mixed-precision allocation needs scipy: pip install -e '.[report]'") from None
    return Bounds, LinearConstraint, milp


def allocate(scores: Mapping[str, Mapping[Pair, float]], table: CostTable, budget: Budget) -> Allocation:
    """The exact ILP optimum: per layer one candidate, minimal summed score, within the size and BOPs budget.

    `scores[layer][pair]`: the sensitivity of setting `layer` to `pair` (lower is better); every allocatable
    layer of `table` needs a score for every candidate.
    """
    Bounds, LinearConstraint, milp = _milp()
    layers, pairs = table.layers, table.candidates
    missing = [(p, c) for p in layers for c in pairs if c not in scores.get(p, {})]
    if missing:
        raise ConfigError(f"no sensitivity score for layer {missing[0][0]!r} at W{missing[0][1][0]}A{missing[0][1][1]}; "
                          f"score every layer at every candidate")
    n_layers, n_pairs = len(layers), len(pairs)
    objective = np.array([float(scores[p][c]) for p in layers for c in pairs])
    size, bops, size0, bops0 = table.deltas()
    one_each = np.kron(np.eye(n_layers), np.ones(n_pairs))
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(size.reshape(1, -1).astype(float), -np.inf, budget.size_bytes - size0),
        LinearConstraint(bops.reshape(1, -1), -np.inf, budget.bops * (1 - _BOPS_MARGIN) - bops0),
    ]
    result = milp(objective, constraints=constraints, integrality=np.ones_like(objective),
                  bounds=Bounds(0, 1))
    if result.x is None:
        cheapest = min(pairs, key=lambda c: c[0] * c[1])
        raise ConfigError(f"no allocation of the candidates fits the budget {budget.label or budget} "
                          f"({result.message.strip()}); add a candidate at or below W{cheapest[0]}A{cheapest[1]}")
    choice = np.round(result.x).reshape(n_layers, n_pairs).argmax(axis=1)
    layer_bits = {path: pairs[j] for path, j in zip(layers, choice)}
    s, b = table.cost(layer_bits)
    if s > budget.size_bytes or b > budget.bops:  # the assembled cost, not the solver's sum
        raise BenchError(f"the ILP's allocation costs {s} bytes / {b:.6g} BOPs over the budget "
                         f"{budget.size_bytes} / {budget.bops:.6g}; report this as a bug")
    return Allocation(layer_bits, float(sum(scores[p][c] for p, c in layer_bits.items())), s, b, budget)


__all__ = ["Allocation", "Budget", "CostTable", "Pair", "allocate", "candidate_pairs"]
