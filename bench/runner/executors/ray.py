"""`--executor ray`: each task is one Ray core task with declared resources, on a running cluster
(`--address auto` / `ray://...` / `HOST:PORT`) or on a Ray instance started on this machine.

Ray, not this module, schedules: tasks are submitted at once, longest first, and spread over the nodes. A task
whose worker process or node is lost is retried by Ray (`max_retries`); a Python exception is never retried
(`retry_exceptions=False`): cell errors are caught inside the task and come back as error records anyway.
"""
from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from bench.errors import ConfigError
from bench.runner.executors.base import RAY, TaskFailed, WorkerIdentity, one_line, set_current_worker, worker_env

MAX_RETRIES = 3  # attempts after the first, for a task whose worker process or node died


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install ray)") from None
    return ray


def _run_remote(work: Callable[[Any], Iterable[Any]], task: Any) -> list:
    import ray
    context = ray.get_runtime_context()
    set_current_worker(WorkerIdentity(socket.gethostname(), context.get_worker_id(), context.get_node_id()))
    return list(work(task))


class RayExecutor:
    name = RAY

    def __init__(self, address: str | None, cpus_per_task: int, gpus_per_task: float | None,
                 local_cpus: int | None = None) -> None:
        self.ray = _import_ray()
        self.cpus_per_task = self.threads = cpus_per_task
        self._connected_here = not self.ray.is_initialized()
        if self._connected_here:
            self._connect(address, local_cpus, worker_env(cpus_per_task))
        gpus_in_cluster = float(self.ray.cluster_resources().get("GPU", 0))
        self.gpus_per_task = gpus_per_task if gpus_per_task is not None else (1.0 if gpus_in_cluster else 0.0)
        if self.gpus_per_task > gpus_in_cluster:
            self.close()
            raise ConfigError(f"--gpus-per-task {self.gpus_per_task:g}: the Ray cluster has {gpus_in_cluster:g} GPUs; "
                              f"use --gpus-per-task 0 (CPU) or connect to a cluster with GPUs (--address)")

    def _connect(self, address: str | None, local_cpus: int | None, env: dict[str, str]) -> None:
        options: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": True}
        if address is None:
            options.update(num_cpus=local_cpus, include_dashboard=False)
        try:
            self.ray.init(address=address, **options)
        except ConnectionError as exc:
            raise ConfigError(f"--address {address}: no Ray cluster there ({' '.join(str(exc).split())[:200]}); start "
                              f"one with `ray start --head`, or omit --address to start Ray on this machine") from None

    def worker_device(self, requested: str | None) -> str | None:
        if self.gpus_per_task > 0:
            if requested not in (None, "auto") and not str(requested).startswith("cuda"):
                raise ConfigError(f"--device {requested} with --gpus-per-task {self.gpus_per_task:g}: each task gets a "
                                  f"GPU; use --device auto/cuda, or --gpus-per-task 0 for CPU tasks")
            return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU(s)
        if requested not in (None, "auto", "cpu"):
            raise ConfigError(f"--device {requested} with --executor ray needs --gpus-per-task G (G > 0), so that Ray "
                              f"gives each task a GPU")
        return "cpu"

    def run(self, tasks: Sequence[Any], work: Callable[[Any], Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
        ray = self.ray
        remote = ray.remote(_run_remote).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=MAX_RETRIES,
            retry_exceptions=False, scheduling_strategy="SPREAD")
        work_ref = ray.put(work)
        pending = {remote.remote(work_ref, task): task for task in tasks}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task = pending.pop(ref)
                try:
                    events = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # `work` itself raised: not retried
                    cause = getattr(exc, "cause", None)
                    yield task, TaskFailed(one_line(cause) if isinstance(cause, BaseException) else one_line(exc))
                    continue
                except ray.exceptions.RayError as exc:  # worker/node lost more often than retried
                    yield task, TaskFailed(f"lost after {MAX_RETRIES + 1} attempts: {type(exc).__name__}")
                    continue
                for event in events:
                    yield task, event

    def close(self) -> None:
        if self._connected_here and self.ray.is_initialized():
            self.ray.shutdown()
        self._connected_here = False
