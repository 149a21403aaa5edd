"""What every executor shares: the protocol, the failure of a whole task, and who computed a result.

An executor runs opaque tasks with a `work(task) -> iterable of events` function and hands the events back
to the driver as they arrive; it knows nothing of what a task computes (no model, method or record).
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

LOCAL, RAY = "local", "ray"
EXECUTORS = (LOCAL, RAY)


@dataclass(frozen=True)
class TaskFailed:
    """The whole task produced nothing: its worker was lost more often than retried, or `work` raised."""
    reason: str  # one line


@dataclass(frozen=True)
class WorkerIdentity:
    """Where a task ran; stamped into every record the task produces."""
    host: str
    worker: str              # "local", "worker 2/4", or the Ray worker id
    node: str | None = None  # Ray node id


_current: WorkerIdentity | None = None


def set_current_worker(identity: WorkerIdentity) -> None:
    """Called by an executor inside the process that is about to run tasks."""
    global _current
    _current = identity


def current_worker() -> WorkerIdentity:
    return _current or WorkerIdentity(socket.gethostname(), LOCAL)


class Executor(Protocol):
    name: str
    threads: int | None  # CPU threads each task should use (None: leave the process's setting alone)

    def worker_device(self, requested: str | None) -> str | None:
        """The `--device` the workers should resolve (a Ray task without a GPU must not pick one up)."""

    def run(self, tasks: Sequence[Any], work: Callable[[Any], Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
        """(task, event) for every event of every task, as they arrive, or (task, TaskFailed) for a lost task.
        Tasks are started in the given order."""

    def close(self) -> None:
        """Release processes or the cluster connection (idempotent)."""


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


PASSED_ON = ("TORCH_HOME",)  # besides every BENCH_* variable (cache, data root, LR policy)


def worker_env(threads: int) -> dict[str, str]:
    """Environment of worker processes: the driver's BENCH_* settings (a Ray cluster started elsewhere does not
    have them), OpenMP sized to the task's CPUs, and the runtime defaults of bench.threads (short spin waits,
    huge pages) unless the driver's environment sets them (or an OpenMP wait policy) itself."""
    from bench.threads import RUNTIME_DEFAULTS, runtime_defaults
    passed = {k: v for k, v in os.environ.items() if k.startswith("BENCH_") or k in PASSED_ON
              or k in RUNTIME_DEFAULTS or k == "OMP_WAIT_POLICY"}
    return {**passed, **runtime_defaults(passed), "OMP_NUM_THREADS": str(threads)}
