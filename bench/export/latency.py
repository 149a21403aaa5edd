"""Measured latency of an FP32 model and of its integer (or fake-quant) counterpart in one runtime, one process.

On a shared CPU the load changes from second to second, so the two models are timed *interleaved* (FP, integer,
FP, integer, ...) after warm-up runs and each side reports its median: a burst of load hits both sides alike and
the ratio stays meaningful. The thread count is fixed and recorded.

Runtimes:
  * `onnxruntime`: the FP32 ONNX export against the QDQ export (ONNX Runtime fuses DequantizeLinear -> op ->
    QuantizeLinear into integer kernels where the graph has that pattern; other QDQ pairs run as float ops);
  * `openvino`: the same two ONNX files compiled by OpenVINO's CPU plugin, plus the FP32 graph with the bf16
    inference precision (the float competitor of int8 on CPUs with AVX512-BF16/AMX) and any peer models (the
    runtimes' own PTQ, bench/export/peers.py), all in one interleaved loop;
  * `torch`: the FP32 module against the fake-quant module (simulated quantization: overhead, not a speed-up).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

RUNTIMES = ("torch", "onnxruntime", "openvino")


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
    others_ms: dict = field(default_factory=dict)   # further models timed in the same loop: "bf16", "peer:<name>"
    notes: dict = field(default_factory=dict)       # e.g. {"bf16": "f32"}: the precision the runtime executed

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
                       provider: str = "cpu", label: str = "int8 QDQ (onnxruntime)",
                       peers: dict[str, Path] | None = None) -> LatencyResult:
    """Latency of two ONNX files (and of each peer model) on the same LR input (sides rounded up to the model's
    pad multiple)."""
    from bench.export.ort_model import OnnxSRModel

    fp, q = OnnxSRModel(fp_path, threads, provider), OnnxSRModel(q_path, threads, provider)
    x = sample_input(_padded_size(fp, lr_size)).numpy()
    runners = {"fp": lambda: fp.run_numpy(x), "q": lambda: q.run_numpy(x)}
    for name, path in (peers or {}).items():
        runners[f"peer:{name}"] = (lambda m=OnnxSRModel(path, threads, provider): m.run_numpy(x))
    medians = interleaved_medians(runners, runs, warmup)
    others = {name: ms for name, ms in medians.items() if name not in ("fp", "q")}
    return LatencyResult("onnxruntime", provider, threads, x.shape[-1], runs, warmup, medians["fp"], medians["q"],
                         label, others)


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def openvino_files_latency(fp_path: Path, q_path: Path, lr_size: int, runs: int, warmup: int, threads: int,
                           precisions: tuple[str, ...] = ("bf16",), peers: dict[str, Path] | None = None,
                           label: str = "int8 QDQ (openvino)") -> LatencyResult:
    """FP32 and int8 (and the FP32 graph at each of `precisions`, and each peer model) in OpenVINO, interleaved."""
    from bench.export.ov_model import OpenVINOSRModel, executed_precision

    fp = OpenVINOSRModel(fp_path, threads, "fp32")
    x = sample_input(_padded_size(fp, lr_size)).numpy()
    models = {"fp": fp, "q": OpenVINOSRModel(q_path, threads, "fp32")}
    notes = {}
    for precision in precisions:
        models[precision] = OpenVINOSRModel(fp_path, threads, precision)
        notes[precision] = executed_precision(models[precision].compiled(x.shape))
    for name, path in (peers or {}).items():
        models[f"peer:{name}"] = OpenVINOSRModel(path, threads, "fp32")
    medians = interleaved_medians({name: (lambda m=m: m.run_numpy(x)) for name, m in models.items()}, runs, warmup)
    others = {name: ms for name, ms in medians.items() if name not in ("fp", "q")}
    return LatencyResult("openvino", "cpu", threads, x.shape[-1], runs, warmup, medians["fp"], medians["q"], label,
                         others, notes)
