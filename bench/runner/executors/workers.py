"""`--workers N`: N local worker processes (spawned, one GPU each through CUDA_VISIBLE_DEVICES when there are
GPUs), each running whole tasks; results come back to the driver when a task is finished.

A worker process that dies (kill, out of memory) breaks the pool: the run stops with a message, and the same
command resumes it. Retrying lost work is the Ray executor's job; this one stays a plain process pool.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bench.errors import BenchError
from bench.runner.executors.base import LOCAL, TaskFailed, WorkerIdentity, one_line, set_current_worker, worker_env


class WorkerLost(BenchError):
    pass


def _start_worker(slots, count: int, gpus: list[str], env: dict[str, str]) -> None:
    # Runs first in each new process, before anything imports torch: CUDA_VISIBLE_DEVICES and OpenMP settings
    # are read once, when torch initialises.
    index = slots.get()
    os.environ.update(env)
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    set_current_worker(WorkerIdentity(socket.gethostname(), f"worker {index + 1}/{count}"))


def _run_in_worker(work: Callable[[Any], Iterable[Any]], task: Any) -> list:
    return list(work(task))


class WorkerPool:
    name = LOCAL

    def __init__(self, workers: int, threads: int, gpus: list[str]) -> None:
        context = multiprocessing.get_context("spawn")  # fork after torch has started threads is unsafe
        slots = context.Queue()
        for index in range(workers):
            slots.put(index)
        self.workers, self.threads = workers, threads
        self._pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                         initargs=(slots, workers, list(gpus), worker_env(threads)))

    def worker_device(self, requested: str | None) -> str | None:
        return requested

    def run(self, tasks: Sequence[Any], work: Callable[[Any], Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
        futures: dict[Future, Any] = {self._pool.submit(_run_in_worker, work, task): task for task in tasks}
        while futures:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            for future in done:
                task = futures.pop(future)
                try:
                    events = future.result()
                except BrokenProcessPool:
                    name = getattr(task, "name", "a task")
                    raise WorkerLost(f"a --workers process died (killed or out of memory) while running {name}; the "
                                     f"cells finished so far are kept: re-run the same command to resume") from None
                except Exception as exc:  # noqa: BLE001 - a bug outside the cells fails this task only
                    yield task, TaskFailed(one_line(exc))
                    continue
                for event in events:
                    yield task, event

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
