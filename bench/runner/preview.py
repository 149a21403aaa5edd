"""`bench run --plan`: what a run would do, before any work and without building a model.

Cells, calibrations and tasks per (model, scale), what is already done in the run directory, and the
remaining time estimated from the run's own recorded calibration and evaluation times (bench.runner.tasks).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.runner.execute import RunOptions, pending_work
from bench.runner.matrix import MatrixSpec
from bench.runner.records import RecordStore
from bench.runner.rundir import RunDir
from bench.runner.tasks import CALIBRATION, RecordedTimes, make_tasks


@dataclass
class GroupPreview:
    """One (model, scale) of the plan."""
    model: str
    scale: int
    cells: int = 0
    done: int = 0
    calibrations: int = 0          # distinct calibrations of the group's cells
    to_calibrate: int = 0          # pending ones without cached bounds
    tasks: int = 0                 # pending tasks
    seconds: float = 0.0           # estimated, over the tasks with a recorded (or comparable) time
    unknown: int = 0               # pending tasks with no time to go by


@dataclass
class RunPreview:
    run_dir: Path
    matrix: str
    groups: list[GroupPreview] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def total(self, name: str) -> float:
        return sum(getattr(g, name) for g in self.groups)


def preview_run(matrix: MatrixSpec, options: RunOptions) -> RunPreview:
    run = RunDir(Path(options.out))
    store = RecordStore(run.path)
    work = pending_work(matrix, options, store, load_models=False)
    times = RecordedTimes(store.read())
    preview = RunPreview(run.path, matrix.name, skipped=work.plan.skipped)
    groups: dict[tuple, GroupPreview] = {}
    pending = set(work.pending)
    for cell in work.plan.cells:
        group = groups.setdefault((cell.model, cell.scale), GroupPreview(cell.model.name, cell.scale))
        group.cells += 1
        group.done += cell not in pending
    for key, cells in _by_group(work.plan.cells).items():
        groups[key].calibrations = len({c.calib_key for c in cells if not c.is_baseline})
    for task in make_tasks(work.pending, work.fingerprints):
        first = task.cells[0]
        group = groups[(first.model, first.scale)]
        group.tasks += 1
        cached = task.kind == CALIBRATION and not options.force and \
            run.bounds_path(task.calib_key, task.fingerprints[0]).exists()
        group.to_calibrate += task.kind == CALIBRATION and not cached
        seconds = times.task(task, calibrates=not cached)
        if seconds is None:
            group.unknown += 1
        else:
            group.seconds += seconds
    preview.groups = list(groups.values())
    return preview


def _by_group(cells):
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault((cell.model, cell.scale), []).append(cell)
    return groups


def format_preview(preview: RunPreview) -> str:
    from tabulate import tabulate
    rows = [[g.model, f"x{g.scale}", g.cells, g.done, g.cells - g.done, g.calibrations, g.to_calibrate, g.tasks,
             _estimate(g.seconds, g.unknown)] for g in preview.groups]
    table = tabulate(rows, headers=["model", "scale", "cells", "done", "to run", "calibrations", "to calibrate",
                                    "tasks", "estimate"], colalign=("left", "left"))
    cells, done = int(preview.total("cells")), int(preview.total("done"))
    lines = [f"plan of matrix {preview.matrix} in {preview.run_dir}:", table,
             f"total: {cells} cells, {int(preview.total('calibrations'))} calibrations; {done} done, {cells - done} to run "
             f"in {int(preview.total('tasks'))} tasks ({int(preview.total('to_calibrate'))} calibrations to run); "
             f"estimate {_estimate(preview.total('seconds'), int(preview.total('unknown')))}"]
    lines += [f"skipped (not available): {note}" for note in preview.skipped]
    return "\n".join(lines)


def _estimate(seconds: float, unknown: int) -> str:
    """Serial work time; tasks with no recorded time to go by are counted, not guessed."""
    if unknown == 0:
        return f"{seconds:.1f} s"
    if seconds == 0:
        return f"unknown ({unknown} task{'s' if unknown > 1 else ''}, no recorded time)"
    return f"{seconds:.1f} s + {unknown} task{'s' if unknown > 1 else ''} without a recorded time"
