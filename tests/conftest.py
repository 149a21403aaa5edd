"""Shared fixtures. Real-data tests read ../shared (CI always has it); without it they skip with a reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: set BENCH_SHARED to the shared reference folder")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def benchmark_root(shared_dir) -> Path:
    """BasicSR-layout data root with Set5, Set14, B100 (+ Urban100/Manga109 subsets)."""
    return _need(shared_dir / "data" / "benchmark")


@pytest.fixture(scope="session")
def train_root(shared_dir) -> Path:
    return _need(shared_dir / "data" / "train")


@pytest.fixture(scope="session")
def weights_dir(shared_dir) -> Path:
    return _need(shared_dir / "weights")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # Tests never write into the user's cache; one cache per test session keeps generated LR reusable.
    cache = tmp_path_factory.getbasetemp() / "bench-cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
