"""Where the tasks of a run execute: in the driver's process (`local`), in N local processes (`--workers N`),
or on a Ray cluster (`ray`). The driver (bench.runner.execute) alone writes the run directory."""
from __future__ import annotations

from dataclasses import dataclass

from bench.errors import ConfigError
from bench.runner.executors.base import EXECUTORS, LOCAL, RAY, Executor, TaskFailed, WorkerIdentity, current_worker


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = LOCAL                   # "local" | "ray"
    workers: int | None = None          # local: N worker processes (None: the driver's own process); ray: local CPUs
    address: str | None = None          # ray: cluster address ("auto", "HOST:PORT", "ray://..."); None starts Ray here
    gpus_per_task: float | None = None  # ray: GPUs per task (None: 1 if the cluster has GPUs, else 0)
    threads: int | None = None          # CPU threads per task (None: the machine's CPUs shared among the workers)

    def check(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"--executor {self.kind}: use one of {', '.join(EXECUTORS)}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: use a positive number of worker processes")
        if self.kind != RAY and self.address is not None:
            raise ConfigError(f"--address {self.address} is for --executor ray; add --executor ray or drop --address")
        if self.kind != RAY and self.gpus_per_task is not None:
            raise ConfigError("--gpus-per-task is for --executor ray; with --executor local, --workers N gives each "
                              "worker one GPU")
        if self.gpus_per_task is not None and self.gpus_per_task < 0:
            raise ConfigError(f"--gpus-per-task {self.gpus_per_task:g}: use 0 or more (fractions share a GPU)")
        if self.kind == RAY and self.address is not None and self.workers is not None:
            raise ConfigError(f"--workers {self.workers} with --address: the cluster's resources decide how many tasks "
                              f"run at once; drop --workers (it sizes a Ray started on this machine)")

    @property
    def in_process(self) -> bool:
        return self.kind == LOCAL and self.workers is None


def _threads_per_worker(config: ExecutorConfig, workers: int) -> int:
    from bench.threads import available_cpus
    return config.threads or max(1, available_cpus() // workers)


def _local_gpus(device: str | None) -> list[str]:
    if device == "cpu":
        return []
    import torch
    return [str(index) for index in range(torch.cuda.device_count())]


def open_executor(config: ExecutorConfig, device: str | None = None) -> Executor:
    config.check()
    if config.in_process:
        from bench.runner.executors.local import LocalExecutor
        return LocalExecutor()
    if config.kind == LOCAL:
        from bench.runner.executors.workers import WorkerPool
        return WorkerPool(config.workers, _threads_per_worker(config, config.workers), _local_gpus(device))
    from bench.runner.executors.ray import RayExecutor
    return RayExecutor(config.address, config.threads or 1, config.gpus_per_task, local_cpus=config.workers)


__all__ = ["EXECUTORS", "LOCAL", "RAY", "Executor", "ExecutorConfig", "TaskFailed", "WorkerIdentity", "current_worker",
           "open_executor"]
