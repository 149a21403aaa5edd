"""Run an ONNX export or an OpenVINO IR with OpenVINO's CPU plugin (`OpenVINOSRModel`, an nn.Module).

OpenVINO reads the QDQ ONNX export directly: its low-precision transformations turn DequantizeLinear -> Conv with
int8 zero-point-0 weights into int8 convolutions. `precision` is the float inference precision of the plugin
(`INFERENCE_PRECISION_HINT`): "fp32", or "bf16" where the CPU has bf16 instructions (AVX512-BF16, AMX); on a CPU
without them the plugin runs f32 whatever the hint says, and `executed_precision` reports what it chose.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.errors import CheckpointError, ConfigError

PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def openvino_core():
    try:
        import openvino as ov
    except ModuleNotFoundError as exc:
        raise ConfigError("openvino is not installed: pip install -e '.[openvino]'") from exc
    return ov.Core()


def read_model(path: str | Path):
    """An OpenVINO model from an .onnx file or an IR .xml (with its .bin beside it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist; create it with `bench export --format onnx`")
    try:
        return openvino_core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises its own exception types for unreadable files
        raise CheckpointError(f"{path} is not a model OpenVINO can read ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]}); re-create it with `bench export`") from exc


def compile_for(model, shape: tuple[int, ...], threads: int, precision: str = "fp32"):
    """Compile `model` for one static input shape on the CPU with `threads` inference threads."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    model = model.clone()
    model.reshape({model.inputs[0].any_name: list(shape)})
    return openvino_core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
                                                        "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})


def executed_precision(compiled) -> str:
    """The float precision the plugin actually runs ("f32" or "bf16")."""
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    return "bf16" if "bf16" in hint else "f32"


def runtime_layer_precisions(compiled) -> Counter:
    """{(layer type, runtime precision): count} of the executed graph, e.g. ("Convolution", "u8") for an int8
    convolution (OpenVINO reports the precision of a layer's input)."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(layer, precision)] += 1
    return counts


def metadata(model) -> dict[str, str]:
    """The ONNX metadata_props OpenVINO keeps under rt_info["framework"] (pad_multiple, pad_mode, ...)."""
    try:
        framework = model.get_rt_info()["framework"]
        return {key: framework[key].astype(str) for key in framework}
    except Exception:  # IR files from other tools carry no framework section
        return {}


class OpenVINOSRModel(nn.Module):
    """An OpenVINO SR model behind the nn.Module interface bench.inference uses (CPU tensors in and out).

    Compiled once per input shape (test images differ in size; a latency input has one shape)."""

    def __init__(self, path: str | Path, threads: int = 1, precision: str = "fp32") -> None:
        super().__init__()
        self.model = read_model(path)
        self.threads, self.precision = int(threads), precision
        meta = metadata(self.model)
        self.pad_multiple = int(meta.get("pad_multiple", 1))
        self.pad_mode = meta.get("pad_mode", "flip_concat")
        self.weights_source = str(path)
        self._requests: dict[tuple[int, ...], object] = {}
        self._compiled: dict[tuple[int, ...], object] = {}

    def compiled(self, shape: tuple[int, ...]):
        shape = tuple(int(s) for s in shape)
        if shape not in self._compiled:
            self._compiled[shape] = compile_for(self.model, shape, self.threads, self.precision)
            self._requests[shape] = self._compiled[shape].create_infer_request()
        return self._compiled[shape]

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.compiled(x.shape)
        request = self._requests[tuple(x.shape)]
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().cpu().numpy())).to(x.device)
