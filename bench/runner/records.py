"""One JSON line per evaluated cell, appended durably; reading tolerates a torn last line.

`records.jsonl` is the single source of truth of a run: resume, tables and plots all read it, and
`pandas.read_json(path, lines=True)` reads it directly. Each append writes one complete line with a single
`write`, then flushes and fsyncs, so a `kill -9` can at worst leave an incomplete *last* line, which
`read_records` ignores (the cell it belonged to is simply recomputed on resume).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RECORDS_FILE = "records.jsonl"
STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass
class ImageScore:
    name: str
    psnr: float | None
    ssim: float | None
    lpips: float | None = None


@dataclass
class CellRecord:
    """Everything measured for one (model, scale, method+params, w/a bits, dataset) cell."""
    key: str
    fingerprint: str
    run: str
    model: str
    scale: int
    method: str                      # registry name, or "fp" / "bicubic"
    label: str                       # display name (differs from `method` for presets, e.g. "2dquant-tiny")
    method_params: dict[str, Any]
    w_bits: int | None               # None for the bicubic baseline; 32 for FP
    a_bits: int | None
    dataset: str                     # plain name (Set5)
    dataset_label: str               # name with the matrix's shrinking, as in the key (Set5[crop64,n2])
    status: str = STATUS_OK
    error: str | None = None
    # --- data
    images: int = 0
    expected_images: int | None = None
    is_subset: bool = False
    crop: int | None = None
    # --- quality
    psnr: float | None = None
    ssim: float | None = None
    lpips: float | None = None
    per_image: list[dict] = field(default_factory=list)
    # --- cost (bench.cost; "ops" follow the paper rule named in ops_rule)
    params: int | None = None
    quantized_weights: int | None = None
    model_size_bytes: int | None = None
    fp_size_bytes: int | None = None
    compression: float | None = None
    ops_rule: str | None = None
    quant_scope: str | None = None
    fp_ops: float | None = None
    ops: float | None = None
    speedup: float | None = None
    bops_speedup: float | None = None
    ops_counted: float | None = None
    speedup_counted: float | None = None
    cost_lr_size: list[int] | None = None
    # --- measured latency: median of `latency_runs` forwards on a fixed LR input after `latency_warmup`
    # untimed ones; a quantized cell's FP reference is the FP model timed in turns with it (bench.runner.latency)
    latency_ms: float | None = None
    latency_fp_ms: float | None = None
    latency_kind: str | None = None  # "fp", or "fake-quant" (simulated quantization, not an int kernel)
    latency_runs: int | None = None
    latency_lr_size: int | None = None
    latency_warmup: int | None = None
    latency_times_ms: list[float] | None = None     # every timed forward (the spread in plots)
    latency_fp_times_ms: list[float] | None = None
    # --- measured deployment figures (bench.export.measure), beside the cost model's theoretical ones above:
    # the `bench export --format packed` file, and with `latency: {runtime: onnxruntime}` FP32 vs int8 QDQ medians
    packed_size_bytes: int | None = None
    packed_header_bytes: int | None = None
    latency_ort_fp32_ms: float | None = None
    latency_ort_int8_ms: float | None = None
    latency_ort_speedup: float | None = None
    latency_ort_threads: int | None = None
    latency_ort_provider: str | None = None         # onnxruntime execution provider ("cpu")
    latency_ort_runs: int | None = None             # timed runs of each model (after one warm-up)
    latency_ort_lr_size: int | None = None          # side of the LR input (rounded up to the pad multiple)
    latency_ort_note: str | None = None
    # with `latency: {runtime: openvino}`: FP32, BF16 (FP32 graph, bf16 precision hint) and int8 QDQ in OpenVINO
    latency_ov_fp32_ms: float | None = None
    latency_ov_bf16_ms: float | None = None
    latency_ov_int8_ms: float | None = None
    latency_ov_speedup: float | None = None          # FP32 / int8
    latency_ov_bf16_speedup: float | None = None     # BF16 / int8
    latency_ov_bf16_executed: str | None = None      # "bf16", or "f32" on a CPU without bf16 instructions
    latency_ov_threads: int | None = None
    latency_ov_runs: int | None = None
    latency_ov_lr_size: int | None = None
    latency_ov_note: str | None = None
    deployment_note: str | None = None
    # the int8 model file itself: the ONNX QDQ export (or a peer's .onnx) and its OpenVINO IR (.xml + .bin)
    onnx_size_bytes: int | None = None
    openvino_ir_size_bytes: int | None = None
    # --- with `eval: {runtimes: [openvino, onnxruntime]}`: the same int8 model run by each runtime's kernels on
    # this cell's images (Y channel, border = scale, as `psnr`/`ssim`), beside the fake quant's `psnr`/`ssim`
    psnr_openvino: float | None = None
    ssim_openvino: float | None = None
    psnr_onnxruntime: float | None = None
    ssim_onnxruntime: float | None = None
    runtime_eval_note: str | None = None             # why a runtime's figures are missing
    # --- a peer (`peers:` in the matrix): a runtime's own PTQ on the same FP model and calibration batch, not a
    # project method; its `psnr`/`ssim` are those of `peer_runtime` running its file (there is no fake quant)
    peer: str | None = None                          # what it is ("onnxruntime quantize_static, MinMax calibrator")
    peer_runtime: str | None = None
    # --- timings and provenance
    calib_seconds: float | None = None
    calib_cached: bool | None = None
    eval_seconds: float | None = None
    method_description: dict[str, Any] | None = None
    weights: str | None = None
    device: str | None = None
    device_name: str | None = None   # the GPU's name or the CPU model
    host: str | None = None          # host name of the process that computed the cell
    node: str | None = None          # Ray node id (`--executor ray`), else null
    worker: str | None = None        # "local" (the driver itself), "worker 2/4" (`--workers 4`), or the Ray worker id
    torch_version: str | None = None
    git_commit: str | None = None
    seed: int | None = None
    timestamp: str | None = None
    images_dir: str | None = None    # SR outputs of this cell, relative to the run directory
    source: str | None = None        # None: computed by `bench run`; else where the record came from (e.g. rows
                                     # of a script converted once into records: scripts/reference_records.py)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=False, allow_nan=True)


class RecordStore:
    """Append-only `records.jsonl` of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RECORDS_FILE
        self._tail_checked = False

    def append(self, record: CellRecord) -> None:
        line = record.to_json()
        if "\n" in line:  # json.dumps never emits raw newlines; guard the one-line invariant anyway
            raise ValueError("a record must serialise to one line")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._repair_torn_tail()
            self._tail_checked = True
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _repair_torn_tail(self) -> None:
        # After a kill mid-write the file may end without a newline; appending right after it would glue
        # the next record onto the torn fragment, so cut the fragment off first.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b"\n":
                return
            handle.seek(0)
            data = handle.read()
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())

    def read(self) -> list[dict]:
        return read_records(self.path)

    def latest(self) -> dict[str, dict]:
        """Last record per cell key (a recomputed cell supersedes its earlier record)."""
        return latest_by_key(self.read())


def read_records(path: str | Path) -> list[dict]:
    """All complete records; an undecodable line is skipped only if it is the last one (torn write)."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            is_last = all(not rest.strip() for rest in lines[number:])
            if not is_last:
                from bench.errors import ConfigError
                raise ConfigError(f"{path}:{number}: corrupt record line in the middle of the file; "
                                  f"delete that line (the cell is recomputed on the next `bench run`)")
    return records


def latest_by_key(records: Iterable[dict]) -> dict[str, dict]:
    latest: dict[str, dict] = {}
    for record in records:
        latest[record["key"]] = record
    return latest


def mixed_tag(record: dict) -> str | None:
    """The mixed-precision tag of a record ("mixed4-r1"), None for uniform bits or a baseline."""
    mixed = (record.get("method_description") or {}).get("mixed")
    if not mixed:
        return None
    return mixed.get("tag") or f"mixed{record.get('w_bits')}"
