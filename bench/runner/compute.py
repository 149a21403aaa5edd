"""Worker side of a run: compute the cells of one task (bench.runner.tasks) and report them as events.

Runs in the driver's process (local executor), in a `--workers` process or in a Ray worker. It never writes
into the run directory: records, calibrated bounds and SR images go back to the driver, which alone writes
them. A process keeps one TaskRunner per run settings, so consecutive tasks share the FP model, its MAC
count and FP latency, the test sets and the calibration batches.
"""
from __future__ import annotations

import dataclasses
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.runner import provenance, stages
from bench.runner.baselines import BicubicUpsampler
from bench.runner.cells import BICUBIC, FP, Cell
from bench.runner.executors.base import current_worker, one_line
from bench.runner.latency import Timing, fill_latency, interleaved_timings
from bench.runner.matrix import MatrixSpec
from bench.runner.records import STATUS_ERROR, CellRecord
from bench.runner.reuse import BoundsMemo
from bench.runner.tasks import BASELINES, Calibrated, CellDone, Task


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs besides the task; picklable, compared by value."""
    matrix: MatrixSpec
    run_name: str
    data_root: Path | None = None
    weights_dir: Path | None = None
    train_root: Path | None = None
    device: str | None = None
    threads: int | None = None        # None: keep this process's torch threads (the command set them)
    progress: bool = False
    plugins: tuple[str, ...] = ()     # --plugin files, imported in each worker so their methods exist there


_runner: TaskRunner | None = None


def runner_for(settings: WorkerSettings) -> TaskRunner:
    """This process's runner for these settings (a new one, and its caches, when the settings change)."""
    global _runner
    if _runner is None or _runner.settings != settings:
        _runner = TaskRunner(settings)
    return _runner


def release_runner() -> None:
    global _runner
    _runner = None


def run_task(settings: WorkerSettings, task: Task) -> Iterator[Calibrated | CellDone]:
    """The `work` function every executor runs (module level, so that it pickles by reference)."""
    return runner_for(settings).run(task)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def base_record(cell: Cell, fingerprint: str, run_name: str, weights_dir: Path | None,
                environment: dict | None = None) -> CellRecord:
    """A record naming the cell, with `environment` (device, versions, worker) filled in."""
    return CellRecord(
        key=cell.key, fingerprint=fingerprint, run=run_name, model=cell.model.name, scale=cell.scale,
        method=cell.method.name, label=cell.method.label, method_params=cell.method.params,
        w_bits=cell.bits.w if cell.bits else None, a_bits=cell.bits.a if cell.bits else None,
        dataset=cell.dataset.name, dataset_label=cell.dataset.label, crop=cell.dataset.crop,
        weights=None if cell.method.name == BICUBIC else stages.describe_weights(cell.model, cell.scale, weights_dir),
        **(environment or {}))


@dataclass
class _Calibration:
    seconds: float | None
    cached: bool
    description: dict
    cost: object           # bench.cost.CostReport
    latency: list[Timing] | None  # [FP, quantized], timed in turns
    deployment: dict | None = None  # measured sizes and runtime latencies (bench.export.measure): record fields
    runtime_models: dict[str, nn.Module] = dataclasses.field(default_factory=dict)  # the int8 file per runtime


class TaskRunner:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.matrix = settings.matrix
        self._load_plugins(settings.plugins)
        if settings.threads is not None:
            from bench.threads import configure_threads
            configure_threads(settings.threads)
        self.device = provenance.resolve_device(settings.device)
        self.calib_dir = stages.train_dir(self.matrix.calibration, settings.train_root)
        self.models: dict[tuple, nn.Module] = {}
        self.datasets: dict[tuple, object] = {}
        self.calib_batches: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._layers: dict[tuple, object] = {}
        self._fp_latency: dict[tuple, Timing | None] = {}
        self._fp_onnx: dict[tuple, Path] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None  # FP32 exports shared by the runtime measurements
        self.bounds_memo = BoundsMemo()  # stage-one reuse (2DQuant after DOBI on the same inputs)
        self.on_status: Callable[[str], None] | None = None  # the driver's progress bar, when in its process

    @staticmethod
    def _load_plugins(plugins: tuple[str, ...]) -> None:
        from bench.plugins import load_plugin
        for path in plugins:
            load_plugin(path)

    # ---------------------------------------------------------------------------- shared, loaded once
    def model(self, cell: Cell) -> nn.Module:
        key = (cell.model, cell.scale)
        if key not in self.models:
            self.models[key] = stages.build_model(cell.model, cell.scale, self.settings.weights_dir, self.device)
        return self.models[key]

    def dataset(self, cell: Cell):
        key = (cell.dataset.name, cell.scale)
        if key not in self.datasets:
            self.datasets[key] = stages.load_data(cell.dataset, cell.scale, self.settings.data_root)
        return self.datasets[key]

    def calib_batch(self, scale: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(calibration patches, held-out patches or None) of this scale, shared by every method."""
        if scale not in self.calib_batches:
            calib = self.matrix.calibration
            batch = stages.calibration_data(calib, scale, self.calib_dir)
            val = stages.calibration_data(calib, scale, self.calib_dir, split="val") if calib.val else None
            self.calib_batches[scale] = (batch, val)
        return self.calib_batches[scale]

    def _layer_macs(self, cell: Cell):
        key = (cell.model, cell.scale)
        if key not in self._layers:
            from bench.cost import count_layer_macs
            size = self.matrix.cost.lr_size
            self._layers[key] = count_layer_macs(self.model(cell), (size, size))
        return self._layers[key]

    def _cost(self, cell: Cell, qmodel: nn.Module | None):
        from bench.cost import analyze
        size = self.matrix.cost.lr_size
        return analyze(self.model(cell), cell.model.name, cell.scale, qmodel, (size, size), self._layer_macs(cell))

    def _fp_timing(self, cell: Cell) -> Timing | None:
        key = (cell.model, cell.scale)
        if key not in self._fp_latency:
            lat = self.matrix.latency
            timings = interleaved_timings([self.model(cell)], lat.lr_size, lat.runs, self.device, seed=self.matrix.seed)
            self._fp_latency[key] = None if timings is None else timings[0]
        return self._fp_latency[key]

    # ------------------------------------------------------------------------------------------ tasks
    def run(self, task: Task) -> Iterator[Calibrated | CellDone]:
        if task.kind == BASELINES:
            for cell, fingerprint in zip(task.cells, task.fingerprints):
                yield self._cell(cell, fingerprint, lambda r, c=cell: self._baseline(c, r))
            return
        # the int8 files the runtimes run live as long as the task's cells are evaluated
        with tempfile.TemporaryDirectory(prefix="bench-int8-") as folder:
            yield from self._calibration_task(task, Path(folder))

    def _calibration_task(self, task: Task, folder: Path) -> Iterator[Calibrated | CellDone]:
        peer = task.cells[0].is_peer
        try:
            calibrate = self._peer_calibrated if peer else self._calibrated
            qmodel, calibration, event = calibrate(task, folder)
        except Exception as exc:  # noqa: BLE001 - a method's failure fails its cells, not the matrix
            trace = self._traceback(exc)
            for index, (cell, fingerprint) in enumerate(zip(task.cells, task.fingerprints)):
                yield self._error(cell, fingerprint, exc, trace if index == 0 else None)
            return
        yield event
        evaluate = self._peer_cell if peer else self._quantized
        for cell, fingerprint in zip(task.cells, task.fingerprints):
            yield self._cell(cell, fingerprint, lambda r, c=cell: evaluate(c, qmodel, calibration, r))

    def _environment(self) -> dict:
        worker = current_worker()
        return {"device": provenance.describe_device(self.device), "device_name": provenance.device_name(self.device),
                "host": worker.host, "node": worker.node, "worker": worker.worker,
                "torch_version": provenance.torch_version(), "git_commit": provenance.git_commit(),
                "seed": self.matrix.seed}

    def _record(self, cell: Cell, fingerprint: str) -> CellRecord:
        return base_record(cell, fingerprint, self.settings.run_name, self.settings.weights_dir, self._environment())

    def _cell(self, cell: Cell, fingerprint: str, compute: Callable[[CellRecord], dict[str, bytes]]) -> CellDone:
        self._status(cell.key)
        record = self._record(cell, fingerprint)
        try:
            images = compute(record)
        except Exception as exc:  # noqa: BLE001 - recorded as an error cell; the matrix goes on
            return self._error(cell, fingerprint, exc, self._traceback(exc))
        return CellDone(record, images)

    def _error(self, cell: Cell, fingerprint: str, exc: BaseException, trace: str | None) -> CellDone:
        record = self._record(cell, fingerprint)
        record.status, record.error = STATUS_ERROR, one_line(exc)
        return CellDone(record, traceback=trace)

    @staticmethod
    def _traceback(exc: BaseException) -> str | None:
        if isinstance(exc, BenchError):  # a user-facing error says everything in its one line
            return None
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3)).rstrip()

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    # ------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, model: nn.Module, cell: Cell, record: CellRecord) -> dict[str, bytes]:
        """Fills the quality fields; returns the SR outputs as PNG bytes when the matrix saves images."""
        from tqdm import tqdm
        bar = tqdm(total=0, desc=f"eval {cell.method.label} {cell.bits_label} {cell.dataset.label}", unit="img",
                   leave=False, position=1, disable=not self.settings.progress, dynamic_ncols=True)
        view = stages.dataset_view(self.dataset(cell), cell.dataset, cell.scale, on_item=lambda: bar.update(1))
        bar.reset(total=len(view))
        with tempfile.TemporaryDirectory(prefix="bench-images-") as folder:
            save_dir = Path(folder) if self.matrix.save_images else None
            try:
                outcome = stages.evaluate_on(model, view, cell.scale, self.device, self.matrix.eval.lpips, save_dir)
            finally:
                bar.close()
            images = {p.name: p.read_bytes() for p in sorted(save_dir.glob("*.png"))} if save_dir else {}
        record.images, record.expected_images, record.is_subset = len(view), view.expected_count, view.is_subset
        record.psnr, record.ssim, record.lpips = outcome.psnr, outcome.ssim, outcome.lpips
        record.per_image, record.eval_seconds = outcome.per_image, outcome.seconds
        return images

    @staticmethod
    def _fill_cost(record: CellRecord, cost) -> None:
        for name, value in cost.summary().items():
            if hasattr(record, name):
                setattr(record, name, value)

    def _fill_latency(self, record: CellRecord, timing: Timing | None, fp_timing: Timing | None, kind: str) -> None:
        fill_latency(record, timing, fp_timing, kind, self.matrix.latency.lr_size)

    def _baseline(self, cell: Cell, record: CellRecord) -> dict[str, bytes]:
        if cell.method.name != FP:
            return self._evaluate(BicubicUpsampler(cell.scale), cell, record)
        images = self._evaluate(self.model(cell), cell, record)
        self._fill_cost(record, self._cost(cell, None))
        self._fill_latency(record, self._fp_timing(cell), self._fp_timing(cell), "fp")
        return images

    def _quantized(self, cell: Cell, qmodel: nn.Module, calibration: _Calibration,
                   record: CellRecord) -> dict[str, bytes]:
        images = self._evaluate(qmodel, cell, record)
        self._fill_cost(record, calibration.cost)
        fp_timing, timing = calibration.latency or (None, None)
        self._fill_latency(record, timing, fp_timing, "fake-quant")
        record.calib_seconds, record.calib_cached = calibration.seconds, calibration.cached
        for name, value in (calibration.deployment or {}).items():
            setattr(record, name, value)
        record.method_description = calibration.description
        self._evaluate_in_runtimes(calibration.runtime_models, cell, record)
        return images

    def _peer_cell(self, cell: Cell, model: nn.Module, calibration: _Calibration,
                   record: CellRecord) -> dict[str, bytes]:
        """A peer's cell: its PSNR is its own runtime's (there is no fake quant), then the other runtimes'."""
        images = self._evaluate(model, cell, record)
        for name, value in (calibration.deployment or {}).items():
            setattr(record, name, value)
        own = record.peer_runtime
        setattr(record, f"psnr_{own}", record.psnr)
        setattr(record, f"ssim_{own}", record.ssim)
        record.calib_seconds, record.calib_cached = calibration.seconds, False
        record.method_description = calibration.description
        self._evaluate_in_runtimes({r: m for r, m in calibration.runtime_models.items() if r != own}, cell, record)
        return images

    def _evaluate_in_runtimes(self, models: dict[str, nn.Module], cell: Cell, record: CellRecord) -> None:
        """`psnr_<runtime>`/`ssim_<runtime>`: the cell's images through each runtime's int8 kernels."""
        notes = [record.runtime_eval_note] if record.runtime_eval_note else []
        for runtime, model in models.items():
            self._status(f"{cell.key} in {runtime}")
            view = stages.dataset_view(self.dataset(cell), cell.dataset, cell.scale)
            try:
                outcome = stages.evaluate_on(model, view, cell.scale, torch.device("cpu"), lpips=False)
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the file is a finding, not a crash
                from bench.export.measure import runtime_error_text
                notes.append(f"{runtime}: {runtime_error_text(exc)}")
                continue
            setattr(record, f"psnr_{runtime}", outcome.psnr)
            setattr(record, f"ssim_{runtime}", outcome.ssim)
        record.runtime_eval_note = "; ".join(notes) or None

    # ----------------------------------------------------------------------------------- calibration
    def _calibrated(self, task: Task, folder: Path) -> tuple[nn.Module, _Calibration, Calibrated]:
        """The task's calibrated model: from the bounds it carries, else calibrated now."""
        cell, fingerprint = task.cells[0], task.fingerprints[0]
        self._status(f"calibrating {task.calib_key}")
        fp_model = self.model(cell)
        if task.bounds is not None:
            qmodel, meta = _load_bounds(task.bounds, fp_model)
            seconds, cached, description = meta.get("calib_seconds"), True, meta.get("method_description", {})
            event = Calibrated(task.calib_key, fingerprint, seconds, None)
        else:
            _seed_everything(self.matrix.seed)
            batch, val = self.calib_batch(cell.scale)
            layer_bits, mixed = None, None
            if cell.bits.mixed is not None:  # mixed precision: the method's own per-layer bits first
                layer_bits, mixed = stages.mixed_layer_bits(
                    fp_model, cell.model.name, cell.scale, cell.bits.mixed, cell.method.name, cell.method.params,
                    cell.model.scope, batch, self.matrix.calibration, self.calib_dir, self.device)
            qmodel, seconds, description = stages.calibrate(
                fp_model, cell.method.name, cell.method.params, cell.bits.w, cell.bits.a, batch, val,
                self.calib_dir, self.device, cell.model.scope, self.matrix.seed, self.settings.progress,
                # stage-one bounds of another cell have other per-layer bits under mixed precision
                prepare=None if mixed else (lambda method: self.bounds_memo.offer(cell, method)),
                layer_bits=layer_bits)
            if mixed is not None:
                description = {**description, "mixed": mixed}  # the record's chosen per-layer bits
            cached = False
            bounds = _dump_bounds(qmodel, {"calib_key": task.calib_key, "calib_seconds": seconds,
                                           "method_description": description})
            event = Calibrated(task.calib_key, fingerprint, seconds, bounds)
        if cell.bits.mixed is None:
            self.bounds_memo.remember(cell, description, qmodel, seconds)
        lat = self.matrix.latency
        latency = interleaved_timings([fp_model, qmodel], lat.lr_size, lat.runs, self.device, seed=self.matrix.seed)
        fields, runtime_models = self._deployment(cell, qmodel, folder)
        return qmodel, _Calibration(seconds, cached, description, self._cost(cell, qmodel), latency,
                                    fields, runtime_models), event

    # ------------------------------------------------------------------------------ integer runtimes
    def _deployment(self, cell: Cell, qmodel: nn.Module, folder: Path) -> tuple[dict, dict[str, nn.Module]]:
        """Measured packed size (always); with `latency: {runtime: ...}` or `eval: {runtimes: [...]}`, the ONNX QDQ
        export's sizes, its latency beside FP32 (OpenVINO: and BF16) in each timed runtime, and the runtime models
        that evaluate it."""
        from bench.export.measure import RUNTIMES, file_size_fields, packed_size_fields
        from bench.export.onnx_qdq import export_onnx
        try:
            fields = packed_size_fields(qmodel)
        except BenchError as exc:
            return {"deployment_note": one_line(exc)}, {}
        timed, wanted = self._timed_runtimes(), self.matrix.eval.runtimes
        if not timed and not wanted:
            return fields, {}
        q_path = folder / "int8-qdq.onnx"
        try:
            export_onnx(qmodel, q_path)
        except BenchError as exc:  # e.g. 4-bit activations: the ONNX QDQ export writes uint8 activations
            notes = {RUNTIMES[r].note_field: str(exc) for r in timed}
            return fields | notes | ({"runtime_eval_note": one_line(exc)} if wanted else {}), {}
        fields.update(file_size_fields(q_path, folder))
        for runtime in timed:
            fields.update(self._file_latency(runtime, cell, q_path))
        models, notes = {}, []
        for runtime in wanted:
            try:
                models[runtime] = RUNTIMES[runtime].model(q_path, torch.get_num_threads())
            except BenchError as exc:  # e.g. the runtime is not installed
                notes.append(f"{runtime}: {one_line(exc)}")
        return fields | ({"runtime_eval_note": "; ".join(notes)} if notes else {}), models

    def _peer_calibrated(self, task: Task, folder: Path) -> tuple[nn.Module, _Calibration, Calibrated]:
        """A peer's int8 file from the FP32 ONNX export and this scale's calibration batch (as every method gets),
        its sizes and latencies, and the model that runs it in its own runtime."""
        from bench.export.measure import RUNTIMES, file_size_fields, runtime_error_text
        from bench.export.peers import build_peer, get_peer
        cell, fingerprint = task.cells[0], task.fingerprints[0]
        self._status(f"calibrating {task.calib_key}")
        peer, reduce_range = get_peer(cell.method.name), cell.bits.w == 7
        _seed_everything(self.matrix.seed)
        batch, _ = self.calib_batch(cell.scale)
        start = time.perf_counter()
        path = build_peer(peer.name, self.fp_onnx(cell), folder / "peer", batch, reduce_range)
        seconds = time.perf_counter() - start
        own = peer.runtime
        threads = torch.get_num_threads()
        models = {own: RUNTIMES[own].model(path, threads)}    # its own runtime must run it: else the cell fails
        fields = {"peer": peer.description, "peer_runtime": own, **file_size_fields(path, folder)}
        notes = []
        for runtime in self.matrix.eval.runtimes:
            if runtime not in models and RUNTIMES[runtime].runs(path):
                try:
                    models[runtime] = RUNTIMES[runtime].model(path, threads)
                except Exception as exc:  # noqa: BLE001 - another runtime that cannot read the file is a finding
                    notes.append(f"{runtime}: {runtime_error_text(exc)}")
        if notes:
            fields["runtime_eval_note"] = "; ".join(notes)
        for runtime in self._timed_runtimes():
            if RUNTIMES[runtime].runs(path):
                fields.update(self._file_latency(runtime, cell, path))
        description = {"name": peer.name, "peer": peer.description, "reduce_range": reduce_range, "file": path.name}
        calibration = _Calibration(seconds, False, description, None, None, fields, models)
        return models[own], calibration, Calibrated(task.calib_key, fingerprint, seconds, None, peer=True)

    def _timed_runtimes(self) -> tuple[str, ...]:
        lat = self.matrix.latency
        return lat.timed_runtimes if lat.runs > 0 else ()

    def fp_onnx(self, cell: Cell) -> Path:
        """The FP32 model's ONNX export (shared by the peers and the runtimes' FP32 latency), made once."""
        from bench.export.onnx_qdq import export_onnx
        key = (cell.model, cell.scale)
        if key not in self._fp_onnx:
            if self._scratch is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="bench-fp32-")
            path = Path(self._scratch.name) / f"{cell.model.name}-x{cell.scale}-{len(self._fp_onnx)}-fp32.onnx"
            export_onnx(self.model(cell), path)
            self._fp_onnx[key] = path
        return self._fp_onnx[key]

    def _file_latency(self, runtime: str, cell: Cell, path: Path) -> dict:
        """FP32 vs the int8 file in `runtime`, interleaved (record fields), or a note naming why not (the runtime is
        not installed, or cannot compile the file: OpenVINO fails on onnxruntime's own IMDTN model)."""
        from bench.export.measure import RUNTIMES, runtime_error_text
        lat, spec = self.matrix.latency, RUNTIMES[runtime]
        try:
            return spec.latency_fields(self.fp_onnx(cell), path, lat.lr_size, lat.runs, torch.get_num_threads())
        except BenchError as exc:
            return {spec.note_field: one_line(exc)}
        except Exception as exc:  # noqa: BLE001 - the runtime's own error: a finding about the file, not a crash
            return {spec.note_field: f"{runtime} cannot run this file: {runtime_error_text(exc)}"}


def _dump_bounds(qmodel: nn.Module, meta: dict) -> bytes:
    with tempfile.TemporaryDirectory(prefix="bench-bounds-") as folder:
        path = Path(folder) / "bounds.pt"
        stages.save_bounds(qmodel, path, meta)
        return path.read_bytes()


def _load_bounds(data: bytes, fp_model: nn.Module) -> tuple[nn.Module, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-bounds-") as folder:
        path = Path(folder) / "bounds.pt"
        path.write_bytes(data)
        return stages.load_bounds(path, fp_model)
