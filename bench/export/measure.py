"""Deployment measurements for result records: measured packed size and onnxruntime / OpenVINO latency of one
calibration.

The runner calls these with a calibrated fake-quant model; they return flat, JSON-safe fields whose names say
that they are measured (beside the cost model's theoretical `model_size_bytes` and `speedup`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch.nn as nn

LATENCY_RUNTIMES = ("torch", "onnxruntime", "openvino")


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


def openvino_latency_fields(fp_model: nn.Module, qmodel: nn.Module, lr_size: int, runs: int,
                            threads: int = 1, warmup: int = 1) -> dict:
    """FP32, BF16 and int8 QDQ medians in OpenVINO (interleaved), or a note where the export does not apply."""
    from bench.errors import ConfigError
    from bench.export.latency import openvino_files_latency
    from bench.export.onnx_qdq import export_onnx

    if runs <= 0:
        return {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-openvino-") as folder:
            fp_path, q_path = Path(folder) / "fp32.onnx", Path(folder) / "int8-qdq.onnx"
            export_onnx(fp_model, fp_path)
            export_onnx(qmodel, q_path)
            result = openvino_files_latency(fp_path, q_path, lr_size, runs, warmup, threads, ("bf16",))
    except ConfigError as exc:  # e.g. 4-bit activations, or openvino not installed
        return {"latency_ov_note": str(exc)}
    bf16 = result.others_ms["bf16"]
    return {"latency_ov_fp32_ms": result.fp32_ms, "latency_ov_bf16_ms": bf16,
            "latency_ov_int8_ms": result.quantized_ms, "latency_ov_speedup": result.speedup,
            "latency_ov_bf16_speedup": bf16 / result.quantized_ms, "latency_ov_bf16_executed": result.notes["bf16"],
            "latency_ov_threads": threads, "latency_ov_runs": result.runs, "latency_ov_lr_size": result.lr_size}
