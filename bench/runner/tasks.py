"""The unit of work handed to an executor, what comes back from it, and how long it is expected to take.

A task is what the cells of a run share: one calibration (model, scale, method+params, bits, calibration batch)
with every evaluation that uses it, so nothing is calibrated twice; or the FP/bicubic baselines of one
(model, scale), which share the FP model and its latency. Tasks are picklable and carry everything the worker
needs besides the matrix: the cells' fingerprints and, when the run's cache has one, the calibrated bounds.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.runner.cells import Cell
from bench.runner.records import STATUS_OK, CellRecord

BASELINES, CALIBRATION = "baselines", "calibration"


@dataclass(frozen=True)
class Task:
    kind: str                        # BASELINES or CALIBRATION
    cells: tuple[Cell, ...]
    fingerprints: tuple[str, ...]    # one per cell
    bounds: bytes | None = None      # the cached calibration of a CALIBRATION task (None: calibrate)

    @property
    def calib_key(self) -> str | None:
        return self.cells[0].calib_key if self.kind == CALIBRATION else None

    @property
    def name(self) -> str:
        first = self.cells[0]
        return self.calib_key or f"{first.model.name}/x{first.scale}/baselines"

    def __repr__(self) -> str:  # the bounds bytes would drown a log line
        return f"Task({self.name!r}, {len(self.cells)} cells)"


# ----------------------------------------------------------------------------------------------- events

@dataclass
class Calibrated:
    """A task's calibration: new bounds for the driver to cache, or None when loaded from the task's bounds."""
    calib_key: str
    fingerprint: str
    seconds: float | None
    bounds: bytes | None
    peer: bool = False     # a peer's (runtime PTQ's) calibration: computed, but nothing to cache


@dataclass
class CellDone:
    """One finished cell (ok or error); `images` are its SR outputs as PNG bytes when the matrix saves them."""
    record: CellRecord
    images: dict[str, bytes] = field(default_factory=dict)
    traceback: str | None = None  # of an unexpected error, on the first cell it failed only


# ------------------------------------------------------------------------------------------- grouping

def make_tasks(cells: Iterable[Cell], fingerprints: dict[Cell, str]) -> list[Task]:
    """Cells grouped into tasks, in the order their first cell appears (the matrix's order)."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        key = (BASELINES, cell.model, cell.scale) if cell.is_baseline else \
              (CALIBRATION, cell.model, cell.scale, cell.method, cell.bits)
        groups.setdefault(key, []).append(cell)
    return [Task(key[0], tuple(group), tuple(fingerprints[c] for c in group)) for key, group in groups.items()]


# ------------------------------------------------------------------------------------------- estimates

def _calib_key_of(record: dict) -> str:
    return record["key"].rsplit("/", 1)[0]  # a cell key is its calibration key plus the dataset label


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class RecordedTimes:
    """Calibration and evaluation times recorded by a run, as estimates for its remaining tasks.

    A calibration not yet recorded is estimated from the same method on the same model and scale at other
    bits, then from the same method on any model; an evaluation from other cells of the same model, scale
    and dataset. Anything else is unknown (None).
    """

    def __init__(self, records: Iterable[dict]) -> None:
        self.calib: dict[str, float] = {}
        self.evals: dict[str, float] = {}
        for record in records:
            if record.get("status") != STATUS_OK:
                continue
            if record.get("calib_seconds") is not None:
                self.calib[_calib_key_of(record)] = float(record["calib_seconds"])
            if record.get("eval_seconds") is not None:
                self.evals[record["key"]] = float(record["eval_seconds"])

    def calibration(self, cell: Cell) -> float | None:
        if cell.calib_key in self.calib:
            return self.calib[cell.calib_key]
        same_model = f"{cell.model.name}/x{cell.scale}/{cell.method_id}/"
        same_method = f"/{cell.method_id}/"
        nearby = _median([s for k, s in self.calib.items() if k.startswith(same_model)])
        return nearby if nearby is not None else _median([s for k, s in self.calib.items() if same_method in k])

    def evaluation(self, cell: Cell) -> float | None:
        if cell.key in self.evals:
            return self.evals[cell.key]
        prefix, suffix = f"{cell.model.name}/x{cell.scale}/", f"/{cell.dataset.label}"
        return _median([s for k, s in self.evals.items() if k.startswith(prefix) and k.endswith(suffix)])

    def task(self, task: Task, calibrates: bool | None = None) -> float | None:
        """Expected seconds of a task (None: unknown). It calibrates unless it carries cached bounds."""
        parts = [self.evaluation(cell) for cell in task.cells]
        if calibrates is None:
            calibrates = task.bounds is None
        if task.kind == CALIBRATION and calibrates:
            parts.append(self.calibration(task.cells[0]))
        return None if any(p is None for p in parts) else sum(parts)


def longest_first(tasks: list[Task], times: RecordedTimes) -> list[Task]:
    """Tasks without a recorded time first (in matrix order: nothing says they are short), then the others,
    longest first, so that the last task to finish on a cluster is a short one."""
    estimates = {id(task): times.task(task) for task in tasks}
    unknown = [t for t in tasks if estimates[id(t)] is None]
    known = sorted((t for t in tasks if estimates[id(t)] is not None), key=lambda t: -estimates[id(t)])
    return unknown + known
