"""`--executor local` (the default): every task in the driver's own process, in matrix order.

Events are handed on as `work` yields them, so each cell is written as soon as it is computed: a kill loses at
most the cell in progress, as before executors existed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from bench.runner.executors.base import LOCAL


class LocalExecutor:
    name = LOCAL
    threads = None  # the command has set the driver's own threads

    def worker_device(self, requested: str | None) -> str | None:
        return requested

    def run(self, tasks: Sequence[Any], work: Callable[[Any], Iterable[Any]]) -> Iterator[tuple[Any, Any]]:
        for task in tasks:
            for event in work(task):
                yield task, event

    def close(self) -> None:
        pass
