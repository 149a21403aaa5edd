"""Speed benchmark of the deploy scope in OpenVINO (skipped by default;
`python -m pytest --benchmark-only --benchmark-enable tests/test_bench_deploy.py`).

IMDN x2 (official weights), deploy scope, MinMax, 1 thread, LR 128x128; in one process, interleaved: OpenVINO FP32,
the project's int8 export, and onnxruntime quantize_static's int8 model (MinMax, same calibration batch) run in
OpenVINO, the runtime's own int8 on the same CPU. Targets:
  * our int8 runs at >= 0.95x the speed of the runtime's own int8 (any CPU);
  * on CPUs with VNNI/AMX, >= 3.5x FP32 (issue 24: 3.85x measured there for the runtime's own int8). Without them
    the int8 kernels are limited by `vpmaddubsw`; the runtime's own int8 reached 1.55-1.67x on this project's AVX2
    EPYC, and the benchmark records the ratio there without a 3.5x target.
On CPUs without VNNI the weights are 7-bit (bench/export/cpu.py: 8-bit weights saturate there; same speed).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

from bench.export.cpu import has_int8_dot_product  # noqa: E402
from bench.export.latency import interleaved_medians, sample_input  # noqa: E402
from bench.export.onnx_qdq import export_onnx  # noqa: E402
from bench.export.ov_model import OpenVINOSRModel  # noqa: E402
from bench.export.peers import build_peer  # noqa: E402
from bench.quant import CalibContext, quantize_with_method  # noqa: E402
from methods.registry import create_method  # noqa: E402


@pytest.mark.benchmark(group="deploy")
def test_imdn_x2_int8_in_openvino_matches_the_runtimes_own_int8(benchmark, weights_dir, train_root, tmp_path):
    from bench.data.calib import calibration_batch
    from models import create_model

    torch.set_num_threads(1)
    fp = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    batch = calibration_batch(train_root, 2, n=32, patch=64, seed=0)
    w_bits = 8 if has_int8_dot_product() else 7
    qmodel, _ = quantize_with_method(fp, create_method("minmax"), w_bits, 8,
                                     CalibContext(fp_model=fp, calib_batch=batch, progress=False), scope="deploy")
    export_onnx(fp, tmp_path / "fp32.onnx")
    export_onnx(qmodel.eval(), tmp_path / "deploy.onnx")
    peer = build_peer("ort-minmax", tmp_path / "fp32.onnx", tmp_path, batch)
    models = {"fp32": OpenVINOSRModel(tmp_path / "fp32.onnx", 1), "ours": OpenVINOSRModel(tmp_path / "deploy.onnx", 1),
              "ort": OpenVINOSRModel(peer, 1)}
    x = sample_input(128).numpy()
    medians = benchmark.pedantic(interleaved_medians, args=({k: (lambda m=m: m.run_numpy(x)) for k, m in models.items()},
                                                            7, 1), rounds=1, iterations=1)
    speedup, vs_runtime = medians["fp32"] / medians["ours"], medians["ort"] / medians["ours"]
    benchmark.extra_info.update(**{f"{k}_ms": v for k, v in medians.items()}, speedup=speedup,
                                speed_vs_runtime_int8=vs_runtime, w_bits=w_bits)
    assert vs_runtime >= 0.95, medians
    if has_int8_dot_product():
        assert speedup >= 3.5, medians
