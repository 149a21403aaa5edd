"""All six methods end to end at 4/3/2 bits on SwinIR-light x2 (shipped weights) and IMDN x2/x4 (official
weights), on Set5 (centre crops), through the matrix runner. Fine-tuning methods run a few steps only (the
full settings are the `paper` matrix's)."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from bench.data.paths import cache_dir
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.records import read_records

SIX = ("minmax", "percentile", "emmse", "ptq4sr", "dobi", "2dquant")
MATRIX = """
name: six-methods
models:
  - {name: imdn, scales: [2, 4], weights: "imdn/IMDN_x{scale}.pth"}
  - {name: swinir-light, scales: [2], weights: shipped}
datasets:
  - {name: Set5, crop: 24}
bits: [4, 3, 2]
methods:
  - minmax
  - percentile
  - emmse
  - {name: ptq4sr, params: {iters: 2, batch: 1, patch: 16}}
  - dobi
  - {name: 2dquant, params: {iters: 2, batch: 2, patch: 16}}
baselines: [fp]
calibration: {n: 2, patch: 16, seed: 0}
latency: {runs: 0}
"""


@pytest.fixture(scope="module")
def module_environment() -> tuple[Path, Path]:
    """The cache and torch hub a module-scoped fixture (like `records` below) sees when it runs."""
    return cache_dir(), Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))


def test_module_fixtures_already_write_into_the_test_cache(module_environment, tmp_path_factory):
    # `records` runs the whole matrix in a module-scoped fixture: its calibration batches and LR images must
    # land in the session's temporary cache, never in the user's $BENCH_CACHE.
    base = tmp_path_factory.getbasetemp()
    cache, torch_home = module_environment
    assert cache.is_relative_to(base) and torch_home.is_relative_to(base), (cache, torch_home, base)


@pytest.fixture(scope="module")
def records(tmp_path_factory, benchmark_root, weights_dir, train_root):
    folder = tmp_path_factory.mktemp("e2e")
    path = folder / "six.yaml"
    path.write_text(MATRIX, encoding="utf-8")
    out = folder / "run"
    stats = run_matrix(load_matrix(path), RunOptions(out=out, data_root=benchmark_root, weights_dir=weights_dir,
                                                      train_root=train_root, progress=False))
    assert (stats.total, stats.errors) == (3 * (1 + 6 * 3), 0)
    return read_records(out / "records.jsonl")


def test_every_cell_is_evaluated_with_the_expected_scope(records):
    cells = {(r["model"], r["scale"], r["method"], r["w_bits"]) for r in records if r["status"] == "ok"}
    for model, scale in (("imdn", 2), ("imdn", 4), ("swinir-light", 2)):
        assert {(m, b) for mm, s, m, b in cells if (mm, s) == (model, scale)} == \
               {("fp", 32)} | {(m, b) for m in SIX for b in (4, 3, 2)}
    scopes = {(r["model"], r["quant_scope"], r["quantized_weights"]) for r in records if r["method"] != "fp"}
    assert scopes == {("imdn", "ptq4sr", 692_160), ("imdn", "ptq4sr", 712_896), ("swinir-light", "2dquant", 691_200)}


def test_fewer_bits_cost_psnr_and_nothing_beats_fp(records):
    for model, scale in (("imdn", 2), ("imdn", 4), ("swinir-light", 2)):
        rows = [r for r in records if (r["model"], r["scale"]) == (model, scale)]
        fp = next(r["psnr"] for r in rows if r["method"] == "fp")
        quant = {(r["method"], r["w_bits"]): r["psnr"] for r in rows if r["method"] != "fp"}
        assert all(math.isfinite(v) and 5.0 < v < fp + 0.05 for v in quant.values()), (model, scale, fp, quant)
        mean = {b: sum(quant[m, b] for m in SIX) / len(SIX) for b in (4, 3, 2)}
        assert mean[4] > mean[3] > mean[2], (model, scale, mean)
