"""CPU thread policy of every `bench` command: one place that decides how many torch threads to use.

Settings that must be made before torch is first imported (`prepare_runtime`, called first by the CLI and by
tests/conftest.py; a user's own value always wins):
  * GOMP_SPINCOUNT=2000: an OpenMP thread waiting at a barrier spins ~2000 times before it sleeps. OpenMP's
    default (300,000 spins) keeps the siblings of a thread whose core is taken by another process spinning at
    every barrier, and a run beside one busy process became an order of magnitude slower; never spinning
    (OMP_WAIT_POLICY=PASSIVE, this project's earlier default) pays a wake-up at every parallel op instead, and
    made small-batch fine-tuning 1.36x slower than this setting on idle cores (docs/speed.md).
    A user's OMP_WAIT_POLICY leaves it unset: libgomp lets GOMP_SPINCOUNT override the policy;
  * THP_MEM_ALLOC_ENABLE=1: torch's CPU allocator asks for transparent huge pages, so a fresh 200 MB activation
    costs ~100x fewer page faults (measured: allocating and filling 50M floats 0.071 -> 0.032 s, a fake-quant
    pass over them 0.131 -> 0.079 s).
  * glibc's allocator keeps freed memory for reuse (`keep_freed_memory`): by default every tensor above a
    dynamic threshold (<= 32 MB) is a fresh mmap, so each activation of a forward is page-faulted in again
    (measured, 983,040 float32 elements: allocate and fill 0.58 -> 0.14 ms on one thread; a clamp into a new
    tensor 1.79 -> 0.25 ms on two, where the faults also serialise the threads). Set
    BENCH_KEEP_FREED_MEMORY=0 to keep glibc's default (the process then returns freed memory to the system).
  * NUMBA_CACHE_DIR=$BENCH_CACHE/numba (default ~/.cache/sr-ptq-bench/numba): numba would otherwise write
    its kernel cache into bench/quant/__pycache__, inside the source tree.
The intra-op thread count (`configure_threads`) is by default the CPUs this process may run on.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Mapping
from pathlib import Path

from bench.errors import ConfigError

THREADS_HELP = ("CPU threads for torch (default: the CPUs this process may use; 1 is fastest on tiny inputs "
                "or when other processes share the cores)")


RUNTIME_DEFAULTS = {"GOMP_SPINCOUNT": "2000", "THP_MEM_ALLOC_ENABLE": "1"}


KEEP_FREED_MEMORY_ENV = "BENCH_KEEP_FREED_MEMORY"
# mallopt(3) parameters of glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD = 1 << 30  # free memory above the heap top beyond 1 GiB still goes back to the system


def runtime_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """The defaults above that `environ` does not decide itself. A user's OMP_WAIT_POLICY keeps its meaning:
    libgomp lets GOMP_SPINCOUNT override the policy, so the spin count is then left unset."""
    missing = {name: value for name, value in RUNTIME_DEFAULTS.items() if name not in environ}
    if "OMP_WAIT_POLICY" in environ:
        missing.pop("GOMP_SPINCOUNT", None)
    if "NUMBA_CACHE_DIR" not in environ:
        missing["NUMBA_CACHE_DIR"] = str(numba_cache_dir(environ))
    return missing


def numba_cache_dir(environ: Mapping[str, str]) -> Path:
    """numba's compiled kernels go to the project's cache ($BENCH_CACHE/numba, as bench.data.paths.cache_dir),
    not next to bench/quant/bin_sums.py, where numba puts them by default: a run never writes into the source
    tree (issue 28)."""
    cache = environ.get("BENCH_CACHE")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache" / "sr-ptq-bench") / "numba"


def prepare_runtime() -> None:
    """Set the defaults above unless the user chose otherwise; must run before `import torch`."""
    os.environ.update(runtime_defaults(os.environ))
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") != "0":
        keep_freed_memory()


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap (no per-tensor mmap) and keep freed memory there for reuse.
    Returns False where there is no glibc (macOS, Windows, musl): nothing is changed there."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask, e.g. `taskset` or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to `requested` (validated) or the default policy; returns the count."""
    if requested is not None and (isinstance(requested, bool) or requested < 1):
        raise ConfigError(f"--threads {requested}: use a positive number of threads")
    import torch
    count = requested if requested is not None else available_cpus()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def add_threads_arg(parser) -> None:
    """The `--threads N` option, with one help text for every command."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)
