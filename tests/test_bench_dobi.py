"""Benchmarks (skipped by default; run with `python -m pytest --benchmark-only tests/test_bench_dobi.py`):

  * DOBI over all 384 quantizers of SwinIR-light x4 on the paper's calibration batch (32 LR patches of 64x64);
  * fake-quant (W4A4, 2dquant scope) inference vs FP inference on the same 32x64x64 input.
Weights are random (the official SwinIR-light checkpoints are not needed for timing).
"""
from __future__ import annotations

import pytest
import torch

from bench.quant import CalibContext, QuantConfig, quantize_model, quantize_with_method, quantizers
from methods.registry import create_method

SCALE = 4


@pytest.fixture(scope="module")
def swinir():
    from models import create_model
    torch.manual_seed(0)
    return create_model("swinir-light", SCALE, weights="random")


@pytest.fixture(scope="module")
def calib_batch(train_root):
    from bench.data.calib import calibration_batch
    return calibration_batch(train_root, SCALE, n=32, patch=64, seed=0)


@pytest.fixture(scope="module")
def quantized(swinir, calib_batch):
    qmodel, _ = quantize_with_method(swinir, create_method("minmax"), 4, 4, CalibContext(calib_batch=calib_batch))
    return qmodel


@pytest.mark.benchmark(group="dobi")
def test_dobi_all_384_quantizers(benchmark, swinir, calib_batch):
    method = create_method("dobi")  # the paper variant; the code variant searches one candidate fewer
    ctx = CalibContext(fp_model=swinir, calib_batch=calib_batch, progress=False)
    qmodel = quantize_model(swinir, QuantConfig(4, 4))
    benchmark.pedantic(method.calibrate, args=(qmodel, ctx), rounds=1, iterations=1)
    assert len(quantizers(qmodel)) == 384 and all(q.calibrated for _, q in quantizers(qmodel))


@pytest.mark.benchmark(group="inference-32x64x64")
def test_fp_inference(benchmark, swinir, calib_batch):
    with torch.no_grad():
        out = benchmark.pedantic(swinir, args=(calib_batch,), rounds=1, iterations=1, warmup_rounds=0)
    assert out.shape == (32, 3, 256, 256)


@pytest.mark.benchmark(group="inference-32x64x64")
def test_fake_quant_inference(benchmark, quantized, calib_batch):
    with torch.no_grad():
        out = benchmark.pedantic(quantized, args=(calib_batch,), rounds=1, iterations=1, warmup_rounds=0)
    assert out.shape == (32, 3, 256, 256) and torch.isfinite(out).all()
