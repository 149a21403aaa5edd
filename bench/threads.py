"""CPU thread policy of every `bench` command: one place that decides how many torch threads to use.

Settings that must be made before torch is first imported (`prepare_runtime`, called first by the CLI and by
tests/conftest.py; a user's own value always wins):
  * OMP_WAIT_POLICY=PASSIVE: with OpenMP's default spin-waiting, a thread whose core is taken by another process
    keeps its siblings spinning at every barrier, and a run beside one busy process becomes an order of magnitude
    slower (README, "Speed and CPU contention");
  * THP_MEM_ALLOC_ENABLE=1: torch's CPU allocator asks for transparent huge pages, so a fresh 200 MB activation
    costs ~100x fewer page faults (measured: allocating and filling 50M floats 0.071 -> 0.032 s, a fake-quant
    pass over them 0.131 -> 0.079 s).
The intra-op thread count (`configure_threads`) is by default the CPUs this process may run on.
"""
from __future__ import annotations

import os

from bench.errors import ConfigError

THREADS_HELP = ("CPU threads for torch (default: the CPUs this process may use; 1 is fastest on tiny inputs "
                "or when other processes share the cores)")


RUNTIME_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def prepare_runtime() -> None:
    """Set the defaults above unless the user chose otherwise; must run before `import torch`."""
    for name, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(name, value)


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
