"""Shared fixtures. Real-data tests read the shared reference folder (CI always has it); without it they skip
with a reason that says what the folder holds and how to provide it.

Isolation: the tests write only inside pytest's temporary folder. At session start, before collection imports any
test module, every cache and temporary folder the suite's libraries use is pointed into it (`SESSION_FOLDERS`:
the project's cache, torch's, ~/.cache through XDG_CACHE_HOME (onnxruntime's device id, matplotlib's font list),
numba's kernels, torch.compile's, Ray's session folders and $TMPDIR itself); subprocesses inherit them. At the end
the user's places are compared with their state at the start, and any change fails the session, naming the paths
(`isolation_changes`).
"""
from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
import tempfile
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
# The user's places, read when this file is imported: before the session changes the environment.
HOME_CACHE = Path.home() / ".cache"
USER_XDG_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or HOME_CACHE).expanduser()
USER_CACHE = Path(os.environ.get("BENCH_CACHE") or Path.home() / ".cache" / "sr-ptq-bench").expanduser()
USER_DATA_ROOT = Path(os.environ.get("BENCH_DATA_ROOT") or REPO / "datasets").expanduser()
USER_TMP = Path(tempfile.gettempdir())
# pytest-benchmark makes its (empty) storage folder in the current directory when it is configured, even with
# --benchmark-skip: read before that, so that the session removes it again when it made it.
BENCHMARKS_EXISTED = (Path.cwd() / ".benchmarks").exists()

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

# Environment variable -> folder under pytest's basetemp, for the whole session (set in pytest_sessionstart).
SESSION_FOLDERS = {
    "BENCH_CACHE": "bench-cache",                 # generated LR, calibration batches, sample sets, downloads
    "TORCH_HOME": "torch-home",                   # torch.hub / torchvision downloads
    "XDG_CACHE_HOME": "xdg-cache",                # ~/.cache: onnxruntime's Microsoft/DeveloperTools, pip, HF, numba's
    "MPLCONFIGDIR": "matplotlib",                 # matplotlib's config and font list (~/.config, ~/.cache/matplotlib)
    "NUMBA_CACHE_DIR": "numba-cache",             # numba's cache=True kernels (else bench/quant/__pycache__/*.nbi|nbc)
    "TORCHINDUCTOR_CACHE_DIR": "inductor-cache",  # torch.compile (else $TMPDIR/torchinductor_<user>)
    "TRITON_CACHE_DIR": "triton-cache",           # torch.compile on a GPU (else ~/.triton)
    "TMPDIR": "tmp",                              # tempfile in this process and in subprocesses; Ray's default
    "RAY_TMPDIR": "tmp",                          # Ray's session folders (<dir>/ray/session_*), before TMPDIR
}
# Entries of the user's $TMPDIR that the suite's libraries make when a redirect above is lost. Only these names are
# checked there: other processes on the machine (other test sessions, `bench` runs) create and delete entries in
# /tmp all the time, so a comparison of the whole folder would fail on their work. A folder of these names that
# already existed is not compared either (another process may be writing into it); on a fresh machine (CI) none
# exists, and a lost redirect makes one.
TMP_OFFENDERS = ("ray", "ray_*", "ray-*", "torchinductor_*", "numba*", "onnx*", "triton*")
NO_CHECK_ENV = "BENCH_TEST_NO_ISOLATION_CHECK"  # 1: no check; or some of cache,tmp,source,shared (comma-separated)
AREAS = ("cache", "tmp", "source", "shared")


def _within(path: Path, folders) -> bool:
    return any(path == folder or path.is_relative_to(folder) for folder in folders)


def watched_folders() -> dict[str, list[Path]]:
    """Area -> folders compared file by file (the source tree: `_source_digests`). ~/.cache is compared whole: no
    tool of the suite writes there once XDG_CACHE_HOME is redirected, but another process of the user may (another
    `bench` run, a browser), and a comparison cannot tell whose write it was: set BENCH_TEST_NO_ISOLATION_CHECK=cache
    then, as =source while files of the tree are edited during the run."""
    caches = list(dict.fromkeys([HOME_CACHE, USER_XDG_CACHE]))
    caches += [USER_CACHE] if not _within(USER_CACHE, caches) else []
    shared = [SHARED] + ([USER_DATA_ROOT] if not _within(USER_DATA_ROOT, [REPO]) else [])
    return {"cache": caches, "shared": shared}


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


def _source_digests(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, str | tuple[int, int]]:
    """Every file of the source tree, tracked or not, except .git and Python bytecode (*.pyc: compiled on import by
    design): its sha256 up to 1 MiB (an editor saving an unchanged file is no change), (size, mtime) above (the default
    data root, datasets/, may hold gigabytes of images). numba's cache files (*.nbi, *.nbc, also in __pycache__)
    count like any other file."""
    found = {}
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        subfolders[:] = [name for name in subfolders if name != ".git" and here / name not in skip]
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = here / name
            try:
                info = path.stat()
                small = info.st_size <= 2**20
                found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest() if small
                                    else (info.st_size, info.st_mtime_ns))
            except OSError:
                continue
    return found


def _tmp_offenders(tmp: Path) -> set[str]:
    try:
        names = os.listdir(tmp)
    except OSError:
        return set()
    return {name for name in names if any(fnmatch.fnmatch(name, pattern) for pattern in TMP_OFFENDERS)}


def user_places(skip_in_source: tuple[Path, ...] = ()) -> dict[str, dict]:
    """The state of every place the session must not change: area -> {folder: {file: state}}."""
    places = {area: {str(f): _snapshot(f) for f in folders} for area, folders in watched_folders().items()}
    places["source"] = {str(REPO): _source_digests(REPO, skip_in_source)}
    places["tmp"] = {str(USER_TMP): {str(USER_TMP / name): "exists" for name in _tmp_offenders(USER_TMP)}}
    return places


def user_folder_changes(before: dict[str, dict], after: dict[str, dict], report_deleted: bool = True) -> list[str]:
    changes = []
    for folder, files in before.items():
        now = after.get(folder, {})
        changes += [f"{p} (written)" for p in sorted(set(now) - set(files))]
        changes += [f"{p} (deleted)" for p in sorted(set(files) - set(now))] if report_deleted else []
        changes += [f"{p} (modified)" for p in sorted(set(files) & set(now)) if files[p] != now[p]]
    return changes


def isolation_changes(before: dict[str, dict], after: dict[str, dict], skip: set[str] = frozenset()) -> list[str]:
    """What changed in the user's places, area by area (`skip`: areas not compared). In $TMPDIR only new offender
    entries count: one that another process removed meanwhile is not the session's doing."""
    changes = []
    for area in AREAS:
        if area not in skip and area in before:
            changes += user_folder_changes(before[area], after.get(area, {}), report_deleted=area != "tmp")
    return changes


def skipped_areas(value: str | None) -> set[str] | None:
    """Areas the user turned the check off for (None: all of them)."""
    if not value or value == "0":
        return set()
    if value == "1":
        return None
    return {area.strip() for area in value.split(",")}


def _skip_in_source(config) -> tuple[Path, ...]:
    # pytest's own folders when they are inside the tree: --basetemp=./tmp, or the cache provider turned back on.
    skip = [Path(config._tmp_path_factory.getbasetemp()).resolve()]
    if config.pluginmanager.has_plugin("cacheprovider"):
        skip.append((REPO / ".pytest_cache").resolve())
    return tuple(skip)


def redirect_session_folders(base: Path) -> pytest.MonkeyPatch:
    patch = pytest.MonkeyPatch()
    for name, folder in SESSION_FOLDERS.items():
        (base / folder).mkdir(exist_ok=True)
        patch.setenv(name, str(base / folder))
    patch.setattr(tempfile, "tempdir", str(base / SESSION_FOLDERS["TMPDIR"]))  # gettempdir() keeps its first answer
    if "numba" in sys.modules:  # numba reads its cache folder once, when imported
        import numba.core.config
        numba.core.config.reload_config()
    return patch


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session) -> None:
    # Before collection: test modules import numba (which reads NUMBA_CACHE_DIR then), and module-scoped fixtures
    # run before function-scoped ones (one used to fill the user's cache).
    config = session.config
    config._user_places_before = user_places(_skip_in_source(config))
    config._session_folders = redirect_session_folders(config._tmp_path_factory.getbasetemp())


def pytest_unconfigure(config) -> None:
    patch = getattr(config, "_session_folders", None)
    if patch is not None:
        patch.undo()


def pytest_sessionfinish(session, exitstatus) -> None:
    config = session.config
    before = getattr(config, "_user_places_before", None)
    if not BENCHMARKS_EXISTED:
        try:
            (Path(config.invocation_params.dir) / ".benchmarks").rmdir()  # only while empty
        except OSError:
            pass
    skip = skipped_areas(os.environ.get(NO_CHECK_ENV))
    if before is None or skip is None:
        return
    changes = isolation_changes(before, user_places(_skip_in_source(config)), skip)
    if changes:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        message = (f"tests changed {len(changes)} file(s) outside their temporary folders, e.g. "
                   f"{'; '.join(changes[:5])} (if another process on this machine wrote them, rerun with "
                   f"{NO_CHECK_ENV}=1, or skip only some of {','.join(AREAS)}: {NO_CHECK_ENV}=source)")
        if reporter is not None:
            reporter.write_line(f"ERROR: {message}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -------------------------------------------------------------------------------------------- helpers

def run_matrix_text(folder: Path, text: str, **options) -> Path:
    """Write `text` as `folder`/m.yaml, run it with `bench run` into `folder`/run (no progress bar); the run folder."""
    from bench.runner.execute import RunOptions, run_matrix
    from bench.runner.matrix import load_matrix

    (folder / "m.yaml").write_text(text, encoding="utf-8")
    run_matrix(load_matrix(folder / "m.yaml"), RunOptions(out=folder / "run", progress=False, **options))
    return folder / "run"


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
