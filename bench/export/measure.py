"""Deployment measurements for result records: measured packed size and onnxruntime latency of one calibration.

The runner calls these with a calibrated fake-quant model; they return flat, JSON-safe fields whose names say
that they are measured (beside the cost model's theoretical `model_size_bytes` and `speedup`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch.nn as nn

LATENCY_RUNTIMES = ("torch", "onnxruntime")


def packed_size_fields(qmodel: nn.Module) -> dict:
    """{'packed_size_bytes', 'packed_header_bytes'}: the file `bench export --format packed` writes, measured."""
    from bench.export.packed import save_packed

    with tempfile.TemporaryDirectory(prefix="bench-packed-") as folder:
        info = save_packed(qmodel, Path(folder) / "model.safetensors")
    return {"packed_size_bytes": info.file_bytes, "packed_header_bytes": info.header_bytes}


def onnxruntime_latency_fields(fp_model: nn.Module, qmodel: nn.Module, lr_size: int, runs: int,
                               threads: int = 1, warmup: int = 1) -> dict:
    """FP32 and int8 QDQ medians in onnxruntime (interleaved), or {} for 8-bit-only exports that do not apply."""
    from bench.errors import ConfigError
    from bench.export.latency import onnxruntime_latency

    if runs <= 0:
        return {}
    try:
        result = onnxruntime_latency(fp_model, qmodel, lr_size, runs, warmup, threads)
    except ConfigError as exc:  # e.g. 4-bit activations: ONNX QDQ writes uint8 activations
        return {"latency_ort_note": str(exc)}
    return {"latency_ort_fp32_ms": result.fp32_ms, "latency_ort_int8_ms": result.quantized_ms,
            "latency_ort_speedup": result.speedup, "latency_ort_threads": threads,
            "latency_ort_provider": result.provider, "latency_ort_runs": result.runs,
            "latency_ort_lr_size": result.lr_size}
