"""Measured latency of an FP32 model and of its integer (or fake-quant) counterpart in one runtime, one process.

On a shared CPU the load changes from second to second, so the two models are timed *interleaved* (FP, integer,
FP, integer, ...) after warm-up runs and each side reports its median: a burst of load hits both sides alike and
the ratio stays meaningful. The thread count is fixed and recorded.

Runtimes:
  * `onnxruntime`: the FP32 ONNX export against the QDQ export (ONNX Runtime fuses DequantizeLinear -> op ->
    QuantizeLinear into integer kernels where the graph has that pattern; other QDQ pairs run as float ops);
  * `torch`: the FP32 module against the fake-quant module (simulated quantization: overhead, not a speed-up).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RUNTIMES = ("torch", "onnxruntime")


@dataclass(frozen=True)
class LatencyResult:
    runtime: str
    provider: str
    threads: int
    lr_size: int
    runs: int
    warmup: int
    fp32_ms: float
    quantized_ms: float
    quantized_label: str          # "int8 QDQ (onnxruntime)" or "fake-quant (torch)"

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.quantized_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def interleaved_medians(runners: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of each runner, timed in turn (a, b, a, b, ...) after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def sample_input(lr_size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(seed))


def _padded_size(model: nn.Module, lr_size: int) -> int:
    multiple = int(getattr(model, "pad_multiple", 1) or 1)
    return -(-lr_size // multiple) * multiple


def torch_latency(fp_model: nn.Module, qmodel: nn.Module, lr_size: int, runs: int, warmup: int,
                  threads: int) -> LatencyResult:
    x = sample_input(_padded_size(fp_model, lr_size))
    with torch.no_grad():
        medians = interleaved_medians({"fp": lambda: fp_model(x), "q": lambda: qmodel(x)}, runs, warmup)
    return LatencyResult("torch", "cpu", threads, x.shape[-1], runs, warmup, medians["fp"], medians["q"],
                         "fake-quant (torch)")


def onnx_files_latency(fp_path: Path, q_path: Path, lr_size: int, runs: int, warmup: int, threads: int,
                       provider: str = "cpu", label: str = "int8 QDQ (onnxruntime)") -> LatencyResult:
    """Latency of two ONNX files on the same LR input (sides rounded up to the model's pad multiple)."""
    from bench.export.ort_model import OnnxSRModel

    fp, q = OnnxSRModel(fp_path, threads, provider), OnnxSRModel(q_path, threads, provider)
    x = sample_input(_padded_size(fp, lr_size)).numpy()
    medians = interleaved_medians({"fp": lambda: fp.run_numpy(x), "q": lambda: q.run_numpy(x)}, runs, warmup)
    return LatencyResult("onnxruntime", provider, threads, x.shape[-1], runs, warmup, medians["fp"], medians["q"],
                         label)


def onnxruntime_latency(fp_model: nn.Module, qmodel: nn.Module, lr_size: int, runs: int, warmup: int,
                        threads: int, provider: str = "cpu", keep_dir: Path | None = None) -> LatencyResult:
    """Export both models (into `keep_dir`, else a temporary folder) and time them with onnxruntime."""
    from bench.export.onnx_qdq import export_onnx

    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        folder = Path(keep_dir) if keep_dir is not None else Path(tmp)
        fp_path, q_path = folder / "fp32.onnx", folder / "int8-qdq.onnx"
        export_onnx(fp_model, fp_path)
        export_onnx(qmodel, q_path)
        return onnx_files_latency(fp_path, q_path, lr_size, runs, warmup, threads, provider)


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())
