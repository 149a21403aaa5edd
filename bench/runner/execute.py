"""Run a matrix without ever losing or repeating work: the driver.

The pending cells are grouped into tasks (bench.runner.tasks: one calibration with the evaluations that use
it, or the FP/bicubic baselines of a model) and handed to an executor (bench.runner.executors: this process,
`--workers N` local processes, or a Ray cluster), which computes them with bench.runner.compute. The driver
alone writes the run directory: every arriving cell is appended to `records.jsonl` at once
(bench.runner.records, fsynced), a cell that arrives twice is written once, and calibrated quantizers are
saved to the run's cache (atomically) so that a resumed run reloads them. A cell whose latest record has the
same fingerprint is skipped, unless `force`. A failing cell is recorded with status "error" and the matrix
goes on; user errors found before any work (missing weights, data or calibration images) stop the run with
one line naming the file and the fix.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from bench.errors import BenchError, with_prefix
from bench.plugins import loaded_plugins
from bench.runner import provenance, stages
from bench.runner.cells import BICUBIC, Cell
from bench.runner.executors import ExecutorConfig, TaskFailed, open_executor
from bench.runner.matrix import MatrixSpec
from bench.runner.plan import Plan, make_plan, matrix_cells
from bench.runner.records import STATUS_ERROR, STATUS_OK, CellRecord, RecordStore
from bench.runner.rundir import RunDir, RunLock, matrix_change_note, record_plan, write_atomic
from bench.runner.tasks import Calibrated, CellDone, RecordedTimes, Task, longest_first, make_tasks


@dataclass
class RunOptions:
    out: Path
    data_root: Path | None = None
    weights_dir: Path | None = None
    train_root: Path | None = None     # HR training images for calibration (`--calib DIR`)
    device: str | None = None          # None/"auto": CUDA when available
    force: bool = False                # recompute every selected cell
    retry_errors: bool = False         # recompute cells whose latest record is an error
    progress: bool = True
    only: dict[str, set[str]] = field(default_factory=dict)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)  # where the tasks run
    announce: Callable[[str], None] | None = None  # told each skipped entry (and why) before any work starts


@dataclass
class RunStats:
    run_dir: Path
    total: int = 0
    already_done: int = 0
    computed: int = 0
    errors: int = 0
    calibrations: int = 0
    calibrations_loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    computed_keys: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.run_dir}: {self.total} cells: {self.computed} computed ({self.errors} errors), "
                f"{self.already_done} already done; {self.calibrations} calibrations run, "
                f"{self.calibrations_loaded} loaded from cache; {self.seconds:.1f} s")


@dataclass
class PendingWork:
    """What a run would compute: the plan, every cell's fingerprint, and the cells not done yet."""
    plan: Plan
    fingerprints: dict[Cell, str]
    pending: list[Cell]


def pending_work(matrix: MatrixSpec, options: RunOptions, store: RecordStore, load_models: bool = True) -> PendingWork:
    """`load_models=False` (bench run --plan) checks the availability of `all` entries by their files only."""
    plan = make_plan(matrix, options.only, options.data_root, options.weights_dir, load_models=load_models)
    fingerprints = _fingerprints(plan.cells, matrix, options.weights_dir)
    latest = {} if options.force else store.latest()
    pending = [c for c in plan.cells if not _finished(c, fingerprints[c], latest, options.retry_errors)]
    return PendingWork(plan, fingerprints, pending)


def run_matrix(matrix: MatrixSpec, options: RunOptions) -> RunStats:
    start = time.perf_counter()
    options.executor.check()
    run = RunDir(Path(options.out))
    stats = RunStats(run.path)
    with RunLock(run):
        store = RecordStore(run.path)
        work = pending_work(matrix, options, store)
        stats.skipped = work.plan.skipped
        for note in stats.skipped if options.announce is not None else ():
            options.announce(f"skipped (not available): {note}")
        stats.total = len(work.plan.cells)
        stats.already_done = stats.total - len(work.pending)
        _write_run_meta(run, matrix, [c.key for c in work.plan.cells], options.announce)
        if work.pending:
            _Driver(matrix, options, run, store, stats, work.fingerprints).execute(work.pending)
    stats.seconds = time.perf_counter() - start
    return stats


def _fingerprints(cells: list[Cell], matrix: MatrixSpec, weights_dir: Path | None) -> dict[Cell, str]:
    """Each cell's fingerprint; every weights file is hashed once."""
    ids: dict[tuple, str | None] = {}
    result = {}
    for cell in cells:
        key = (cell.model, cell.scale)
        if key not in ids:
            ids[key] = stages.weights_identity(cell.model, cell.scale, weights_dir)
        result[cell] = cell.fingerprint(matrix, ids[key])
    return result


def _finished(cell: Cell, fingerprint: str, latest: dict[str, dict], retry_errors: bool) -> bool:
    record = latest.get(cell.key)
    if record is None or record.get("fingerprint") != fingerprint:
        return False
    return record.get("status") == STATUS_OK or not retry_errors


def _write_run_meta(run: RunDir, matrix: MatrixSpec, planned: list[str],
                    announce: Callable[[str], None] | None = None) -> None:
    same = run.matrix_copy.is_file() and run.matrix_copy.read_bytes() == Path(matrix.path).read_bytes()
    matrix_keys = [] if same else [c.key for c in matrix_cells(matrix)]
    note = None if same else matrix_change_note(run, matrix_keys)
    if note and announce is not None:
        announce(note)
    meta = record_plan(run.read_meta(), planned, same, matrix_keys)  # `bench results` counts done / planned from it
    now = provenance.timestamp()
    meta.update({"name": matrix.name, "matrix_path": str(matrix.path), "last_started": now,
                 "git_commit": provenance.git_commit()})
    meta.setdefault("created", now)
    run.write_meta(meta)
    write_atomic(run.matrix_copy, Path(matrix.path).read_bytes())


class _Driver:
    def __init__(self, matrix: MatrixSpec, options: RunOptions, run: RunDir, store: RecordStore,
                 stats: RunStats, fingerprints: dict[Cell, str]) -> None:
        self.matrix = matrix
        self.fingerprints = fingerprints
        self.options = options
        self.run = run
        self.store = store
        self.stats = stats
        self.arrived: set[str] = set()  # keys written by this run: a cell that arrives twice is written once
        self.calibrated: set[tuple[str, str]] = set()  # likewise for calibrations (key, fingerprint)
        self.overall: tqdm | None = None

    def _settings(self, device: str | None, threads: int | None, progress: bool):
        from bench.runner.compute import WorkerSettings
        o = self.options
        return WorkerSettings(self.matrix, self.run.name, o.data_root, o.weights_dir, o.train_root, device, threads,
                              progress, loaded_plugins())

    # ------------------------------------------------------------------------------------- preflight
    def _preflight(self, pending: list[Cell], runner) -> None:
        """Load every model, dataset and calibration batch the pending cells need, before any work,
        so that a missing file stops the run at once with the loader's one-line message."""
        prefix = f"matrix {self.matrix.path.name}"
        try:
            for cell in pending:
                if cell.method.name != BICUBIC:
                    runner.model(cell)
                runner.dataset(cell)
                if not cell.is_baseline:
                    runner.calib_batch(cell.scale)
        except BenchError as exc:
            raise with_prefix(exc, prefix) from None

    # ------------------------------------------------------------------------------------- execution
    def execute(self, pending: list[Cell]) -> None:
        from bench.runner.compute import release_runner, run_task, runner_for
        config = self.options.executor
        in_process = config.in_process
        # In the driver's process the preflight runner is the one that computes (its models stay loaded);
        # for other executors it only checks the files, on the CPU, and is dropped before the work starts.
        preflight = self._settings(self.options.device if in_process else "cpu", None,
                                   self.options.progress and in_process)
        release_runner()  # nothing cached by an earlier run in this process (weights may have changed since)
        runner = runner_for(preflight)
        self._preflight(pending, runner)
        if not in_process:
            release_runner()
        tasks = self._tasks(pending)
        executor = open_executor(config, self.options.device)
        try:
            if in_process:
                settings = preflight
                runner.on_status = self._status
            else:
                settings = self._settings(executor.worker_device(self.options.device), executor.threads, False)
                tasks = longest_first(tasks, RecordedTimes(self.store.read()))
            self._consume(executor.run(tasks, functools.partial(run_task, settings)))
        finally:
            executor.close()
            release_runner()

    def _tasks(self, pending: list[Cell]) -> list[Task]:
        """The pending cells as tasks; a calibration cached in the run directory travels with its task."""
        tasks = []
        for task in make_tasks(pending, self.fingerprints):
            path = self.run.bounds_path(task.calib_key, task.fingerprints[0]) if task.calib_key else None
            if path is not None and path.exists() and not self.options.force:
                task = Task(task.kind, task.cells, task.fingerprints, path.read_bytes())
            tasks.append(task)
        return tasks

    def _consume(self, arrivals) -> None:
        self.overall = tqdm(total=self.stats.total, initial=self.stats.already_done, desc="cells", unit="cell",
                            disable=not self.options.progress, dynamic_ncols=True)
        try:
            for task, event in arrivals:
                if isinstance(event, TaskFailed):
                    self._task_failed(task, event)
                elif isinstance(event, Calibrated):
                    self._calibrated(event)
                else:
                    self._cell_done(event)
        finally:
            self.overall.close()

    def _calibrated(self, event: Calibrated) -> None:
        if (event.calib_key, event.fingerprint) in self.calibrated:
            return
        self.calibrated.add((event.calib_key, event.fingerprint))
        if event.peer:
            self.stats.calibrations += 1
            return
        if event.bounds is None:
            self.stats.calibrations_loaded += 1
            return
        write_atomic(self.run.bounds_path(event.calib_key, event.fingerprint), event.bounds)
        self.stats.calibrations += 1

    def _cell_done(self, done: CellDone) -> None:
        record = done.record
        if record.key in self.arrived:
            return
        for name, data in done.images.items():
            write_atomic(self.run.images_dir(record.key) / name, data)
        if done.images:
            record.images_dir = str(self.run.images_dir(record.key).relative_to(self.run.path))
        if record.status == STATUS_ERROR:
            self._report_error(record, done.traceback)
        self._append(record)

    def _task_failed(self, task: Task, failure: TaskFailed) -> None:
        """Every cell of a task that produced nothing becomes an error cell (`--retry-errors` retries it)."""
        from bench.runner.compute import base_record
        for cell, fingerprint in zip(task.cells, task.fingerprints):
            if cell.key in self.arrived:
                continue
            record = base_record(cell, fingerprint, self.run.name, self.options.weights_dir)
            record.status, record.error = STATUS_ERROR, f"task {task.name} failed: {failure.reason}"
            self._report_error(record, None)
            self._append(record)

    def _report_error(self, record: CellRecord, trace: str | None) -> None:
        tqdm.write(f"bench: cell {record.key} failed: {record.error}")
        if trace:
            tqdm.write(trace)
        self.stats.errors += 1

    def _append(self, record: CellRecord) -> None:
        record.timestamp = provenance.timestamp()
        self.store.append(record)
        self.arrived.add(record.key)
        self.stats.computed += 1
        self.stats.computed_keys.append(record.key)
        self.overall.update(1)

    def _status(self, text: str) -> None:
        if self.overall is not None:
            self.overall.set_postfix_str(text, refresh=True)
