"""Shared fixtures. Real-data tests read the shared reference folder (CI always has it); without it they skip
with a reason that says what the folder holds and how to provide it.

Isolation: no test reads or writes the user's cache. `$BENCH_CACHE` and `$TORCH_HOME` point into pytest's
temporary folder for the whole session, set before the first fixture of any scope runs (a module-scoped
fixture used to run before a function-scoped override and fill the user's cache). At the end of the
session the user's cache, the default data root and the results folder are compared with their state at
the start; any change fails the session, naming the paths.
"""
from __future__ import annotations

import os
from pathlib import Path

from bench.threads import prepare_runtime

prepare_runtime()  # before torch is imported (short OpenMP spin waits, huge pages, kept freed memory), as the CLI does

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))
SHARED_CONTENT = ("the standard SR test sets (data/benchmark: Set5, Set14, B100, Urban100/Manga109 subsets), "
                  "HR training images (data/train: T91, BSD200) and official checkpoints (weights/: IMDN, CARN-M, "
                  "NTIRE 2022 ESR)")
# The user's folders as they were before any test changed the environment.
USER_CACHE = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "sr-ptq-bench").expanduser()
USER_DATA_ROOT = Path(os.environ.get("BENCH_DATA_ROOT") or REPO / "datasets").expanduser()
# Checked for writes at the end of the session (the results folder is not: `bench run` writes it by design,
# and another process on the machine may be running one).
USER_FOLDERS = tuple(dict.fromkeys([USER_CACHE, USER_DATA_ROOT, REPO / "datasets", SHARED]))

# The CI machine has 2 cores. BENCH_TEST_THREADS=1 when the CPU is shared with another job: oversubscribed
# OpenMP threads slow inference down by an order of magnitude.
torch.set_num_threads(int(os.environ.get("BENCH_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))


# ------------------------------------------------------------------------------------ the shared folder

def skip_reason(path: Path) -> str:
    return (f"{path} not found. The shared reference folder ({SHARED}) holds {SHARED_CONTENT}; point "
            f"BENCH_SHARED at your copy of it (same layout), or run the commands yourself with your own "
            f"--data-root / --weights-dir / --calib folders")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(skip_reason(path))
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


# ------------------------------------------------------------------------------------------- isolation

@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # Session-scoped and autouse: set up before any module- or function-scoped fixture. One cache per test
    # session keeps generated LR and calibration batches reusable across tests.
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_CACHE", str(base / "bench-cache"))
        patch.setenv("TORCH_HOME", str(base / "torch-home"))
        yield


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under `folder`: any write changes one of them."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                info = path.stat()
                found[str(path)] = (info.st_size, info.st_mtime_ns)
        except OSError:
            continue
    return found


def pytest_sessionstart(session) -> None:
    session.config._user_folders_before = {str(f): _snapshot(f) for f in USER_FOLDERS}


def user_folder_changes(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    changes = []
    for folder, files in before.items():
        now = after.get(folder, {})
        changes += [f"{p} (written)" for p in sorted(set(now) - set(files))]
        changes += [f"{p} (deleted)" for p in sorted(set(files) - set(now))]
        changes += [f"{p} (modified)" for p in sorted(set(files) & set(now)) if files[p] != now[p]]
    return changes


NO_CHECK_ENV = "BENCH_TEST_NO_ISOLATION_CHECK"  # =1 where other processes share the cache during the suite


def pytest_sessionfinish(session, exitstatus) -> None:
    before = getattr(session.config, "_user_folders_before", None)
    if before is None or os.environ.get(NO_CHECK_ENV) == "1":
        return
    changes = user_folder_changes(before, {f: _snapshot(Path(f)) for f in before})
    if changes:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"tests changed {len(changes)} file(s) outside their temporary folders, e.g. "
                   f"{'; '.join(changes[:5])} (if another process on this machine wrote them, rerun with "
                   f"{NO_CHECK_ENV}=1)")
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -------------------------------------------------------------------------------------------- helpers

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
