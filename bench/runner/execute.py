"""Run a matrix without ever losing or repeating work.

Order of work: cells are grouped by (model, scale), which shares one FP model, its MAC count and its FP
latency; inside a group, by calibration key (method+params, bits), which shares one calibration. Calibrated
quantizers are saved to the run's cache (atomically) so that a resumed run reloads them; every evaluated
cell is appended to `records.jsonl` at once (bench.runner.records), so a kill loses at most the cell in
progress. A cell whose latest record has the same fingerprint is skipped, unless `force`.
A failing cell is recorded with status "error" and the matrix goes on; user errors found before any work
(missing weights, data or calibration images) stop the run with one line naming the file and the fix.
"""
from __future__ import annotations

import random
import time
import traceback
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from bench.errors import BenchError, with_prefix
from bench.runner import provenance, stages
from bench.runner.baselines import BicubicUpsampler
from bench.runner.cells import BICUBIC, FP, Cell
from bench.runner.latency import median_latency_ms
from bench.runner.matrix import MatrixSpec
from bench.runner.plan import make_plan
from bench.runner.records import STATUS_ERROR, STATUS_OK, CellRecord, RecordStore
from bench.runner.rundir import RunDir, RunLock, write_atomic


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


def run_matrix(matrix: MatrixSpec, options: RunOptions) -> RunStats:
    start = time.perf_counter()
    run = RunDir(Path(options.out))
    stats = RunStats(run.path)
    with RunLock(run):
        plan = make_plan(matrix, options.only, options.data_root, options.weights_dir)
        stats.skipped = plan.skipped
        stats.total = len(plan.cells)
        store = RecordStore(run.path)
        fingerprints = _fingerprints(plan.cells, matrix, options.weights_dir)
        latest = {} if options.force else store.latest()
        pending = [c for c in plan.cells if not _finished(c, fingerprints[c], latest, options.retry_errors)]
        stats.already_done = stats.total - len(pending)
        _write_run_meta(run, matrix)
        if pending:
            executor = _Executor(matrix, options, run, store, stats, fingerprints)
            executor.execute(pending)
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


def _write_run_meta(run: RunDir, matrix: MatrixSpec) -> None:
    meta = run.read_meta()
    now = provenance.timestamp()
    meta.update({"name": matrix.name, "matrix_path": str(matrix.path), "last_started": now,
                 "git_commit": provenance.git_commit()})
    meta.setdefault("created", now)
    run.write_meta(meta)
    write_atomic(run.matrix_copy, Path(matrix.path).read_bytes())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


class _Executor:
    def __init__(self, matrix: MatrixSpec, options: RunOptions, run: RunDir, store: RecordStore,
                 stats: RunStats, fingerprints: dict[Cell, str]) -> None:
        self.matrix = matrix
        self.fingerprints = fingerprints
        self.options = options
        self.run = run
        self.store = store
        self.stats = stats
        self.device = provenance.resolve_device(options.device)
        self.models: dict[tuple, nn.Module] = {}
        self.datasets: dict[tuple, object] = {}
        self.calib_dir = stages.train_dir(matrix.calibration, options.train_root)
        self.calib_batches: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.provenance = {"device": provenance.describe_device(self.device),
                           "torch_version": provenance.torch_version(),
                           "git_commit": provenance.git_commit(), "seed": matrix.seed}
        self.overall: tqdm | None = None
        self._shown_tracebacks: set[int] = set()

    # ------------------------------------------------------------------------------------- preflight
    def _preflight(self, pending: list[Cell]) -> None:
        """Load every model, dataset and calibration batch the pending cells need, before any work,
        so that a missing file stops the run at once with the loader's one-line message."""
        prefix = f"matrix {self.matrix.path.name}"
        try:
            for cell in pending:
                if cell.method.name != BICUBIC:
                    self._model(cell)
                self._dataset(cell)
                if not cell.is_baseline:
                    self._calib_batch(cell.scale)
        except BenchError as exc:
            raise with_prefix(exc, prefix) from None

    def _model(self, cell: Cell) -> nn.Module:
        key = (cell.model, cell.scale)
        if key not in self.models:
            self.models[key] = stages.build_model(cell.model, cell.scale, self.options.weights_dir, self.device)
        return self.models[key]

    def _dataset(self, cell: Cell):
        key = (cell.dataset.name, cell.scale)
        if key not in self.datasets:
            self.datasets[key] = stages.load_data(cell.dataset, cell.scale, self.options.data_root)
        return self.datasets[key]

    def _calib_batch(self, scale: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(calibration patches, held-out patches or None) of this scale, shared by every method."""
        if scale not in self.calib_batches:
            calib = self.matrix.calibration
            batch = stages.calibration_data(calib, scale, self.calib_dir)
            val = stages.calibration_data(calib, scale, self.calib_dir, split="val") if calib.val else None
            self.calib_batches[scale] = (batch, val)
        return self.calib_batches[scale]

    # ------------------------------------------------------------------------------------- execution
    def execute(self, pending: list[Cell]) -> None:
        self._preflight(pending)
        self.overall = tqdm(total=self.stats.total, initial=self.stats.already_done, desc="cells", unit="cell",
                            disable=not self.options.progress, dynamic_ncols=True)
        try:
            for _, group in groupby(pending, key=lambda c: (c.model, c.scale)):
                self._run_model_group(list(group))
        finally:
            self.overall.close()

    def _run_model_group(self, cells: list[Cell]) -> None:
        group = _ModelGroup(self, cells[0])
        for cell in (c for c in cells if c.is_baseline):
            self._run_cell(cell, lambda c=cell: group.evaluate_baseline(c))
        quantized = [c for c in cells if not c.is_baseline]
        for _, calib_cells in groupby(quantized, key=lambda c: c.calib_key):
            calib_cells = list(calib_cells)
            try:
                qmodel, calib = group.quantized(calib_cells[0])
            except Exception as exc:  # noqa: BLE001 - a method's failure must not stop the matrix
                for cell in calib_cells:
                    self._record_error(cell, exc)
                continue
            for cell in calib_cells:
                self._run_cell(cell, lambda c=cell, q=qmodel, k=calib: group.evaluate_quantized(c, q, k))

    def _run_cell(self, cell: Cell, compute) -> None:
        self._status(f"{cell.key}")
        try:
            record = compute()
        except Exception as exc:  # noqa: BLE001 - recorded as an error cell; the matrix goes on
            self._record_error(cell, exc)
            return
        self._append(record)

    def _record_error(self, cell: Cell, exc: BaseException) -> None:
        record = self.base_record(cell)
        record.status, record.error = STATUS_ERROR, _one_line(exc)
        tqdm.write(f"bench: cell {cell.key} failed: {record.error}")
        if not isinstance(exc, BenchError) and id(exc) not in self._shown_tracebacks:
            self._shown_tracebacks.add(id(exc))  # a failed calibration fails several cells: show it once
            tqdm.write("".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)).rstrip())
        self.stats.errors += 1
        self._append(record)

    def _append(self, record: CellRecord) -> None:
        record.timestamp = provenance.timestamp()
        self.store.append(record)
        self.stats.computed += 1
        self.stats.computed_keys.append(record.key)
        self.overall.update(1)

    def _status(self, text: str) -> None:
        if self.overall is not None:
            self.overall.set_postfix_str(text, refresh=True)

    def stage_bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="img", leave=False, position=1,
                    disable=not self.options.progress, dynamic_ncols=True)

    def base_record(self, cell: Cell) -> CellRecord:
        return CellRecord(
            key=cell.key, fingerprint=self.fingerprints[cell], run=self.run.name, model=cell.model.name,
            scale=cell.scale, method=cell.method.name, label=cell.method.label,
            method_params=cell.method.params,
            w_bits=cell.bits.w if cell.bits else None, a_bits=cell.bits.a if cell.bits else None,
            dataset=cell.dataset.name, dataset_label=cell.dataset.label, crop=cell.dataset.crop,
            weights=None if cell.method.name == BICUBIC else
            stages.describe_weights(cell.model, cell.scale, self.options.weights_dir),
            **self.provenance)


@dataclass
class _Calibration:
    seconds: float
    cached: bool
    description: dict
    cost: object           # bench.cost.CostReport
    latency_ms: float | None


class _ModelGroup:
    """Shared state of the cells of one (model, scale): FP model, MAC counts, FP latency."""

    def __init__(self, executor: _Executor, cell: Cell) -> None:
        self.ex = executor
        self.matrix = executor.matrix
        self.cell, self.spec, self.scale = cell, cell.model, cell.scale
        self._layers = None
        self._fp_latency: float | None | bool = False  # False: not measured yet

    # ---- shared, computed on first use
    @property
    def fp_model(self) -> nn.Module:
        return self.ex._model(self.cell)  # built once by the executor (bicubic-only groups never build it)

    def layers(self):
        if self._layers is None:
            from bench.cost import count_layer_macs
            size = self.matrix.cost.lr_size
            self._layers = count_layer_macs(self.fp_model, (size, size))
        return self._layers

    def cost(self, qmodel: nn.Module | None):
        from bench.cost import analyze
        size = self.matrix.cost.lr_size
        return analyze(self.fp_model, self.spec.name, self.scale, qmodel, (size, size), self.layers())

    def fp_latency(self) -> float | None:
        if self._fp_latency is False:
            lat = self.matrix.latency
            self._fp_latency = median_latency_ms(self.fp_model, lat.lr_size, lat.runs, self.ex.device,
                                                 seed=self.matrix.seed)
        return self._fp_latency

    # ---- evaluation
    def _evaluate(self, model: nn.Module, cell: Cell, record: CellRecord) -> None:
        base = self.ex._dataset(cell)
        bar = self.ex.stage_bar(0, f"eval {cell.method.label} {cell.bits_label} {cell.dataset.label}")
        view = stages.dataset_view(base, cell.dataset, cell.scale, on_item=lambda: bar.update(1))
        bar.reset(total=len(view))
        save_dir = self.ex.run.images_dir(cell.key) if self.matrix.save_images else None
        try:
            outcome = stages.evaluate_on(model, view, cell.scale, self.ex.device, self.matrix.eval.lpips, save_dir)
        finally:
            bar.close()
        record.images, record.expected_images, record.is_subset = len(view), view.expected_count, view.is_subset
        record.psnr, record.ssim, record.lpips = outcome.psnr, outcome.ssim, outcome.lpips
        record.per_image, record.eval_seconds = outcome.per_image, outcome.seconds
        if save_dir is not None:
            record.images_dir = str(save_dir.relative_to(self.ex.run.path))

    def _fill_cost(self, record: CellRecord, cost) -> None:
        for name, value in cost.summary().items():
            if hasattr(record, name):
                setattr(record, name, value)

    def _fill_latency(self, record: CellRecord, latency_ms: float | None, kind: str) -> None:
        lat = self.matrix.latency
        record.latency_fp_ms = self.fp_latency()
        record.latency_ms, record.latency_kind = latency_ms, kind
        record.latency_runs, record.latency_lr_size = lat.runs, lat.lr_size

    def evaluate_baseline(self, cell: Cell) -> CellRecord:
        record = self.ex.base_record(cell)
        if cell.method.name == FP:
            self._evaluate(self.fp_model, cell, record)
            self._fill_cost(record, self.cost(None))
            self._fill_latency(record, self.fp_latency(), "fp")
        else:
            self._evaluate(BicubicUpsampler(cell.scale), cell, record)
        return record

    def quantized(self, cell: Cell) -> tuple[nn.Module, _Calibration]:
        """The calibrated model of this calibration key: from the run's cache, else calibrated now."""
        path = self.ex.run.bounds_path(cell.calib_key, self.ex.fingerprints[cell])
        self.ex._status(f"calibrating {cell.calib_key}")
        if path.exists() and not self.ex.options.force:
            qmodel, meta = stages.load_bounds(path, self.fp_model)
            seconds, cached, description = meta.get("calib_seconds"), True, meta.get("method_description", {})
            self.ex.stats.calibrations_loaded += 1
        else:
            _seed_everything(self.matrix.seed)
            batch, val = self.ex._calib_batch(cell.scale)
            qmodel, seconds, description = stages.calibrate(
                self.fp_model, cell.method.name, cell.method.params, cell.bits.w, cell.bits.a, batch, val,
                self.ex.calib_dir, self.ex.device, cell.model.scope, self.matrix.seed, self.ex.options.progress)
            stages.save_bounds(qmodel, path, {"calib_key": cell.calib_key, "calib_seconds": seconds,
                                              "method_description": description})
            cached = False
            self.ex.stats.calibrations += 1
        lat = self.matrix.latency
        latency = median_latency_ms(qmodel, lat.lr_size, lat.runs, self.ex.device, seed=self.matrix.seed)
        return qmodel, _Calibration(seconds, cached, description, self.cost(qmodel), latency)

    def evaluate_quantized(self, cell: Cell, qmodel: nn.Module, calib: _Calibration) -> CellRecord:
        record = self.ex.base_record(cell)
        self._evaluate(qmodel, cell, record)
        self._fill_cost(record, calib.cost)
        self._fill_latency(record, calib.latency_ms, "fake-quant")
        record.calib_seconds, record.calib_cached = calib.seconds, calib.cached
        record.method_description = calib.description
        return record
