"""The runtimes' own post-training quantization, run on the same FP model and calibration batch: reference rows.

These are not the project's methods (they know nothing of bench.quant): each peer takes the FP32 ONNX export and
the calibration patches, and writes a model file its runtime executes in int8.

  * `ort-minmax`, `ort-entropy`, `ort-percentile`: onnxruntime's `quantize_static` (QDQ format, QDQ on every
    quantizable op's input and output; uint8 activations, symmetric int8 per-channel weights, its own calibrator:
    MinMax, Entropy (KL) or Percentile 99.999 %), after its `quant_pre_process`;
  * `nncf`: NNCF's `nncf.quantize` on the OpenVINO model (its default CPU preset: FakeQuantize on the inputs of
    convolutions, matmuls and eltwise ops, symmetric weights, fast bias correction), saved as OpenVINO IR.

`PEERS` describes them as data: the runtime a peer needs and the function that builds its file.

`reduce_range=True` asks each peer for what CPUs without VNNI execute exactly (bench/export/cpu.py): onnxruntime's
`reduce_range` (7-bit weights) and NNCF's overflow fix on every layer (`OverflowFix.ENABLE`, weights halved to 7
bits). Their defaults are 8-bit weights (onnxruntime) and the fix on the first layer only (NNCF).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.errors import ConfigError

INPUT_NAME = "lr"
# (weight bits, activation bits) a peer runs at: its default int8, or its 7-bit-weight variant (reduce_range)
PEER_BITS = ((8, 8), (7, 8))


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    build: Callable[..., Path]          # (fp32 onnx, output folder, calibration batch, reduce_range) -> file
    package: str                                        # what must be installed
    runtime: str                        # the runtime whose file it writes and whose PSNR is its own (measure.RUNTIMES)


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration patches, one patch per call (as its examples)."""

    def __init__(self, batch: torch.Tensor) -> None:
        self.items = iter([{INPUT_NAME: batch[i:i + 1].numpy()} for i in range(batch.shape[0])])

    def get_next(self):
        return next(self.items, None)


def _copy_metadata(source: Path, target: Path) -> None:
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    model = onnx.load(str(target))
    known = {p.key for p in model.metadata_props}
    for key, value in meta.items():
        if key not in known:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(target))


def _ort_static(calibrator: str) -> Callable[[Path, Path, torch.Tensor], Path]:
    def build(fp_path: Path, folder: Path, batch: torch.Tensor, reduce_range: bool = False) -> Path:
        try:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
            from onnxruntime.quantization.shape_inference import quant_pre_process
        except ModuleNotFoundError as exc:
            raise ConfigError("onnxruntime is not installed: pip install -e '.[onnx]'") from exc
        pre = folder / "ort-pre.onnx"
        out = folder / f"ort-{calibrator.lower()}{'-7bit' if reduce_range else ''}.onnx"
        quant_pre_process(str(fp_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), _Reader(batch), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=reduce_range, calibrate_method=getattr(CalibrationMethod, calibrator))
        _copy_metadata(fp_path, out)
        return out
    return build


def _nncf(fp_path: Path, folder: Path, batch: torch.Tensor, reduce_range: bool = False) -> Path:
    try:
        import nncf
        import openvino as ov
    except ModuleNotFoundError as exc:
        raise ConfigError("nncf/openvino are not installed: pip install -e '.[openvino]'") from exc
    model = ov.Core().read_model(str(fp_path))
    model.reshape({model.inputs[0].any_name: [1, *batch.shape[1:]]})
    items = [batch[i:i + 1].numpy() for i in range(batch.shape[0])]
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE if reduce_range
                                              else OverflowFix.FIRST_LAYER)
    quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), advanced_parameters=advanced)
    quantized.reshape({quantized.inputs[0].any_name: [1, 3, -1, -1]})
    out = folder / ("nncf-7bit.xml" if reduce_range else "nncf.xml")
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


PEERS: dict[str, Peer] = {peer.name: peer for peer in (
    Peer("ort-minmax", "onnxruntime quantize_static, MinMax calibrator", _ort_static("MinMax"), "onnxruntime",
         "onnxruntime"),
    Peer("ort-entropy", "onnxruntime quantize_static, Entropy calibrator", _ort_static("Entropy"), "onnxruntime",
         "onnxruntime"),
    Peer("ort-percentile", "onnxruntime quantize_static, Percentile calibrator", _ort_static("Percentile"),
         "onnxruntime", "onnxruntime"),
    Peer("nncf", "NNCF nncf.quantize (OpenVINO backend, default preset)", _nncf, "nncf", "openvino"),
)}


def get_peer(name: str) -> Peer:
    if name not in PEERS:
        raise ConfigError(f"unknown peer {name!r}; use one of: {', '.join(PEERS)}")
    return PEERS[name]


def build_peer(name: str, fp_onnx: str | Path, folder: str | Path, batch: torch.Tensor,
               reduce_range: bool = False) -> Path:
    """Quantize the FP32 ONNX model `fp_onnx` with peer `name` on `batch` (N, 3, h, w); returns its file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return get_peer(name).build(Path(fp_onnx), folder, batch.detach().float().cpu().contiguous(), reduce_range)


def ort_calibrated_ranges(fp_onnx: str | Path, batch: torch.Tensor, folder: str | Path) -> dict[str, tuple]:
    """{tensor name: (min, max)} that onnxruntime's MinMax calibrator collects on `batch` for every tensor of the
    FP graph (what quantize_static turns into scales and zero points)."""
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(str(fp_onnx), augmented_model_path=str(Path(folder) / "ort-augmented.onnx"))
    calibrator.collect_data(_Reader(batch.detach().float().cpu()))
    ranges = calibrator.compute_data()
    return {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value) for name in ranges}
