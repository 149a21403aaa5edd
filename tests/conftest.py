"""Shared fixtures. Real-data tests read ../shared (CI always has it); without it they skip with a reason."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))

# The CI machine has 2 cores. BENCH_TEST_THREADS=1 when the CPU is shared with another job: oversubscribed
# OpenMP threads slow inference down by an order of magnitude.
torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny tensors: intra-op threads gain nothing there, and on a shared, loaded
    CPU their synchronisation makes every small op up to 100x slower. The previous setting is restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def swinir_random():
    """SwinIR-light x2 with seeded random weights (architecture tests: no checkpoint needed)."""
    from models import create_model
    torch.manual_seed(0)
    return create_model("swinir-light", 2, weights="random")


@pytest.fixture(scope="module")
def tiny_batch():
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # one 8x8 window per image
