"""Run an exported ONNX model with ONNX Runtime as an SR model (`OnnxSRModel`, an nn.Module for bench.evaluate)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.errors import CheckpointError, ConfigError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def ort_session(path: str | Path, threads: int = 1, provider: str = "cpu"):
    """An InferenceSession with fixed intra-op threads (1 inter-op thread) on `provider` (cpu or cuda)."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as exc:
        raise ConfigError("onnxruntime is not installed: pip install -e '.[onnx]'") from exc
    if provider not in PROVIDERS:
        raise ConfigError(f"--provider {provider}: use one of {', '.join(PROVIDERS)}")
    if PROVIDERS[provider] not in ort.get_available_providers():
        raise ConfigError(f"--provider {provider}: this onnxruntime has no {PROVIDERS[provider]} "
                          f"(available: {', '.join(ort.get_available_providers())}); use --provider cpu")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file {path} does not exist; create it with `bench export --format onnx`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no warnings about optimised-model serialisation
    try:
        return ort.InferenceSession(str(path), options, providers=[PROVIDERS[provider]])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise CheckpointError(f"{path} is not an ONNX model onnxruntime can load ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160]}); re-create it with `bench export`") from exc


def model_metadata(session) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


class OnnxSRModel(nn.Module):
    """An ONNX SR model behind the nn.Module interface bench.inference uses (CPU tensors in and out).

    It has no parameters; `pad_multiple`/`pad_mode` come from the file's metadata so that inference pads as it
    would for the PyTorch model (the exported graph traced an already padded input).
    """

    def __init__(self, path: str | Path, threads: int = 1, provider: str = "cpu") -> None:
        super().__init__()
        self.session = ort_session(path, threads, provider)
        meta = model_metadata(self.session)
        self.pad_multiple = int(meta.get("pad_multiple", 1))
        self.pad_mode = meta.get("pad_mode", "flip_concat")
        self.metadata = meta
        self.weights_source = str(path)
        self._input = self.session.get_inputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run_numpy(x.detach().cpu().numpy())).to(x.device)
