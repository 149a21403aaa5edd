"""Deployment measurements for result records: measured packed size and onnxruntime / OpenVINO latency of one
calibration.

The runner calls these with a calibrated fake-quant model; they return flat, JSON-safe fields whose names say
that they are measured (beside the cost model's theoretical `model_size_bytes` and `speedup`).
"""
from __future__ import annotations

import re
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
    """FP32 and int8 QDQ medians in onnxruntime (interleaved), or a note where the export does not apply."""
    return _exported_fields(fp_model, qmodel, lr_size, runs, threads, warmup, onnxruntime_file_fields, "latency_ort")


def openvino_latency_fields(fp_model: nn.Module, qmodel: nn.Module, lr_size: int, runs: int,
                            threads: int = 1, warmup: int = 1) -> dict:
    """FP32, BF16 and int8 QDQ medians in OpenVINO (interleaved), or a note where the export does not apply."""
    return _exported_fields(fp_model, qmodel, lr_size, runs, threads, warmup, openvino_file_fields, "latency_ov")


def _exported_fields(fp_model, qmodel, lr_size, runs, threads, warmup, timed, prefix: str) -> dict:
    from bench.errors import ConfigError
    from bench.export.onnx_qdq import export_onnx

    if runs <= 0:
        return {}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-runtime-") as folder:
            fp_path, q_path = Path(folder) / "fp32.onnx", Path(folder) / "int8-qdq.onnx"
            export_onnx(fp_model, fp_path)
            export_onnx(qmodel, q_path)
            return timed(fp_path, q_path, lr_size, runs, threads, warmup)
    except ConfigError as exc:  # e.g. 4-bit activations: ONNX QDQ writes uint8 activations
        return {f"{prefix}_note": str(exc)}


def onnxruntime_file_fields(fp_path: Path, q_path: Path, lr_size: int, runs: int, threads: int = 1,
                            warmup: int = 1) -> dict:
    """FP32 and int8 medians of two ONNX files in onnxruntime, interleaved (fields `latency_ort_*`)."""
    from bench.export.latency import onnx_files_latency

    if runs <= 0:
        return {}
    result = onnx_files_latency(fp_path, q_path, lr_size, runs, warmup, threads)
    return {"latency_ort_fp32_ms": result.fp32_ms, "latency_ort_int8_ms": result.quantized_ms,
            "latency_ort_speedup": result.speedup, "latency_ort_threads": threads,
            "latency_ort_provider": result.provider, "latency_ort_runs": result.runs,
            "latency_ort_lr_size": result.lr_size}


def openvino_file_fields(fp_path: Path, q_path: Path, lr_size: int, runs: int, threads: int = 1,
                         warmup: int = 1) -> dict:
    """FP32, BF16 (the FP32 graph with the bf16 hint) and int8 medians in OpenVINO, interleaved (`latency_ov_*`);
    `q_path` is an ONNX file or an OpenVINO IR .xml."""
    from bench.export.latency import openvino_files_latency

    if runs <= 0:
        return {}
    result = openvino_files_latency(fp_path, q_path, lr_size, runs, warmup, threads, ("bf16",))
    bf16 = result.others_ms["bf16"]
    return {"latency_ov_fp32_ms": result.fp32_ms, "latency_ov_bf16_ms": bf16,
            "latency_ov_int8_ms": result.quantized_ms, "latency_ov_speedup": result.speedup,
            "latency_ov_bf16_speedup": bf16 / result.quantized_ms, "latency_ov_bf16_executed": result.notes["bf16"],
            "latency_ov_threads": threads, "latency_ov_runs": result.runs, "latency_ov_lr_size": result.lr_size}


# Per runtime: the latency fields of (FP32 file, int8 file), and the file types it reads.
FILE_LATENCY = {"onnxruntime": onnxruntime_file_fields, "openvino": openvino_file_fields}
READS = {"onnxruntime": (".onnx",), "openvino": (".onnx", ".xml")}


def runs_file(runtime: str, path: Path) -> bool:
    """Whether `runtime` reads the model file `path` (onnxruntime reads no OpenVINO IR)."""
    return Path(path).suffix in READS[runtime]


def runtime_error_text(exc: BaseException, limit: int = 200) -> str:
    """One line saying why a runtime could not run a model file: the runtime's own message without the source-file
    prefixes OpenVINO stacks up ("Exception from src/...cpp:117: ...")."""
    text = " ".join(str(exc).split())
    text = re.sub(r"Exception from \S+:\d+:\s*", "", text)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    half = (limit - 5) // 2   # the start says where, the end what: keep both
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


def runtime_model(runtime: str, path: Path, threads: int = 1) -> nn.Module:
    """The model file run by `runtime`'s CPU kernels behind the nn.Module interface (bench.inference)."""
    if runtime == "onnxruntime":
        from bench.export.ort_model import OnnxSRModel
        return OnnxSRModel(path, threads)
    from bench.export.ov_model import OpenVINOSRModel
    return OpenVINOSRModel(path, threads)


def file_size_fields(path: Path, folder: Path) -> dict:
    """{'onnx_size_bytes', 'openvino_ir_size_bytes'} of an int8 model file: the .onnx itself (None for an IR) and
    its OpenVINO IR (.xml + .bin, weights as they are), converted into `folder` where OpenVINO is installed."""
    path = Path(path)
    fields = {"onnx_size_bytes": path.stat().st_size if path.suffix == ".onnx" else None}
    xml = path
    if path.suffix != ".xml":
        try:
            import openvino as ov
        except ModuleNotFoundError:
            return fields
        from bench.export.ov_model import read_model
        xml = Path(folder) / f"{path.stem}-ir.xml"
        ov.save_model(read_model(path), str(xml), compress_to_fp16=False)
    fields["openvino_ir_size_bytes"] = xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    return fields
