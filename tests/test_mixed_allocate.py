"""ILP bit allocation (bench.mixed.allocate): the exact optimum of a brute-force search, never over budget."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.cost import analyze
from bench.errors import ConfigError
from bench.mixed.allocate import Budget, CostTable, allocate, candidate_pairs
from bench.quant import QuantConfig, quantize_model

CANDIDATES = candidate_pairs([2, 3, 4])


class Toy(nn.Module):
    """12 quantized layers under ptq4sr (the first and last conv fixed at 8 bits, 10 allocated): convs of
    different widths, kernels and strides, so that weights and MACs rank the layers differently."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3, 8, 16, 16, 8, 24, 8, 8, 16, 8, 12, 3]
        convs = []
        for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
            kernel = 1 if i % 3 == 2 else 3
            stride = 2 if i in (3, 6) else 1
            convs.append(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2))
        self.convs = nn.ModuleList(convs)
        self.mix = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def table():
    torch.manual_seed(0)
    return CostTable(Toy(), "toy", 1, "ptq4sr", CANDIDATES)


def _brute_force(scores: np.ndarray, size: np.ndarray, bops: np.ndarray, size_left: float, bops_left: float):
    """argmin of the summed score over all 3^10 choices within both budgets (vectorised enumeration)."""
    n_layers, n_pairs = scores.shape
    choices = np.array(list(itertools.product(range(n_pairs), repeat=n_layers)))
    rows = np.arange(n_layers)
    total = scores[rows, choices].sum(1)
    feasible = (size[rows, choices].sum(1) <= size_left) & (bops[rows, choices].sum(1) <= bops_left)
    total[~feasible] = np.inf
    best = int(np.argmin(total))
    return choices[best], total[best]


def test_the_cost_table_adds_up_to_the_cost_model_of_the_quantized_model(table):
    assert len(table.layers) == 10  # 11 convs + 1 linear, minus the two 8-bit edge convs
    rng = np.random.default_rng(1)
    size, bops, size0, bops0 = table.deltas()
    for _ in range(3):
        pick = rng.integers(0, len(CANDIDATES), len(table.layers))
        bits = {p: CANDIDATES[j] for p, j in zip(table.layers, pick)}
        report = analyze(table.fp_model, "toy", 1, quantize_model(table.fp_model, QuantConfig(4, 4, "ptq4sr",
                                                                                             layer_bits=bits)))
        rows = np.arange(len(table.layers))
        assert report.size_bytes == size0 + size[rows, pick].sum() == table.cost(bits)[0]
        assert report.bops("paper") == pytest.approx(bops0 + bops[rows, pick].sum(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget_kind", ["like-3", "tight-bops"])
def test_ilp_equals_the_brute_force_optimum_and_stays_within_budget(table, seed, budget_kind):
    like3 = table.budget_like(3)
    if budget_kind == "like-3":
        budget = like3
    else:  # room in size (W4A4's) but BOPs between W2A2's and W3A3's: the BOPs constraint binds
        budget = Budget(table.budget_like(4).size_bytes, (table.budget_like(2).bops + like3.bops) / 2)
    rng = np.random.default_rng(seed)
    # decreasing in bits per layer, as sensitivities are, with layer-dependent slopes
    scores = np.sort(rng.exponential(1.0, (len(table.layers), len(CANDIDATES))), axis=1)[:, ::-1].copy()
    score_map = {p: {c: float(scores[i, j]) for j, c in enumerate(CANDIDATES)} for i, p in enumerate(table.layers)}
    allocation = allocate(score_map, table, budget)
    size, bops, size0, bops0 = table.deltas()
    best, best_total = _brute_force(scores, size, bops, budget.size_bytes - size0, budget.bops - bops0)
    assert [allocation.layer_bits[p] for p in table.layers] == [CANDIDATES[j] for j in best]
    assert allocation.objective == pytest.approx(best_total, rel=1e-12)
    uniform_total = scores[:, CANDIDATES.index((3, 3))].sum()
    assert allocation.objective <= uniform_total + 1e-12 or budget_kind == "tight-bops"
    qmodel = quantize_model(table.fp_model, QuantConfig(4, 4, "ptq4sr", layer_bits=allocation.layer_bits))
    report = analyze(table.fp_model, "toy", 1, qmodel)
    assert report.size_bytes == allocation.size_bytes <= budget.size_bytes
    assert report.bops("paper") <= budget.bops


def test_a_budget_no_candidate_fits_is_a_one_line_error(table):
    scores = {p: dict.fromkeys(CANDIDATES, 1.0) for p in table.layers}
    floor = table.budget_like(2)
    with pytest.raises(ConfigError, match="no allocation of the candidates fits"):
        allocate(scores, table, Budget(floor.size_bytes - 1, floor.bops))
    with pytest.raises(ConfigError, match="no sensitivity score for layer"):
        allocate({}, table, floor)
    with pytest.raises(ConfigError, match="candidate 9"):
        candidate_pairs([4, 9])
