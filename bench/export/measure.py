"""Deployment measurements for result records: measured packed size and onnxruntime / OpenVINO latency of one
calibration.

The runner calls these with a calibrated fake-quant model or its exported files; they return flat, JSON-safe
fields whose names say that they are measured (beside the cost model's theoretical `model_size_bytes` and
`speedup`). `RUNTIMES` describes each integer runtime as data.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

LATENCY_RUNTIMES = ("torch", "onnxruntime", "openvino")


def packed_size_fields(qmodel: nn.Module) -> dict:
    """{'packed_size_bytes', 'packed_header_bytes'}: the file `bench export --format packed` writes, measured."""
    from bench.export.packed import save_packed

    with tempfile.TemporaryDirectory(prefix="bench-packed-") as folder:
        info = save_packed(qmodel, Path(folder) / "model.safetensors")
    return {"packed_size_bytes": info.file_bytes, "packed_header_bytes": info.header_bytes}


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


def _ort_model(path: Path, threads: int) -> nn.Module:
    from bench.export.ort_model import OnnxSRModel
    return OnnxSRModel(path, threads)


def _ov_model(path: Path, threads: int) -> nn.Module:
    from bench.export.ov_model import OpenVINOSRModel
    return OpenVINOSRModel(path, threads)


@dataclass(frozen=True)
class RuntimeSpec:
    """An integer runtime as data: what the runner needs to evaluate and time a model file in it. Adding a runtime
    is one entry here, its `psnr_<name>`/`ssim_<name>` and latency fields in bench.runner.records, and its column
    name in bench.runner.tables.RUNTIME_PSNR."""
    name: str
    reads: tuple[str, ...]                          # model file suffixes it runs
    model: Callable[[Path, int], nn.Module]         # (file, threads) -> nn.Module running it (bench.inference)
    latency_fields: Callable[..., dict]             # (FP32 file, int8 file, lr_size, runs, threads) -> record fields
    note_field: str                                 # the record field saying why it was not timed

    def runs(self, path: Path) -> bool:
        return Path(path).suffix in self.reads


RUNTIMES: dict[str, RuntimeSpec] = {spec.name: spec for spec in (
    RuntimeSpec("onnxruntime", (".onnx",), _ort_model, onnxruntime_file_fields, "latency_ort_note"),
    RuntimeSpec("openvino", (".onnx", ".xml"), _ov_model, openvino_file_fields, "latency_ov_note"),
)}


def runtime_error_text(exc: BaseException, limit: int = 200) -> str:
    """One line saying why a runtime could not run a model file: the runtime's own message without the source-file
    prefixes OpenVINO stacks up ("Exception from src/...cpp:117: ...")."""
    text = " ".join(str(exc).split())
    text = re.sub(r"Exception from \S+:\d+:\s*", "", text)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    half = (limit - 5) // 2   # the start says where, the end what: keep both
    return text if len(text) <= limit else f"{text[:half]} ... {text[-half:]}"


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
