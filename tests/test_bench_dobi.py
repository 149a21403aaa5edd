"""Speed benchmarks (skipped by default; `python -m pytest --benchmark-only --benchmark-enable tests/test_bench_dobi.py`).

Targets of the speed issue, each measured as a ratio to an FP forward in the same process (the machines are
shared and noisy; FP and the measured variant are timed in turns and medians are compared):
  * DOBI over all 384 quantizers of SwinIR-light on the paper batch (32 LR patches of 64x64): <= 3 FP forwards;
  * W4A4 fake-quant inference: <= 1.3x FP, SwinIR-light (2dquant scope) and IMDN (ptq4sr scope), same input;
  * one fine-tuning step's forward and backward (DQC/Pac, bounds trained) on the demo's SwinIR-light x2 batch:
    <= 2.75x the FP model's forward and backward, and <= 0.8x the autograd composite's step (BENCH_FAKE_QUANT_STE=0)
    in the same process (the demo's wall time follows from it: docs/speed.md).
The figures of the last run are in docs/speed.md and results/reference/speed.md.
Weights are random for SwinIR-light (timing does not depend on them) and the official ones for IMDN.
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.quant import CalibContext, QuantConfig, quantize_model, quantize_with_method, quantizers
from methods.registry import create_method

SCALE = 4
DOBI_TARGET = 3.0
FAKE_QUANT_TARGET = 1.3
TRAIN_STEP_TARGET = 2.75          # quantized forward + backward / FP forward + backward
TRAIN_STEP_VS_COMPOSITE = 0.8     # one-node training path / autograd composite


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn(*args)
    return time.perf_counter() - start


def interleaved_ratio(fp, variant, x, rounds: int = 3) -> tuple[float, float, float]:
    """(median variant time / median FP time, FP median, variant median), timed in turns after one warm-up each."""
    _seconds(fp, x), _seconds(variant, x)
    fp_times, variant_times = [], []
    for _ in range(rounds):
        fp_times.append(_seconds(fp, x))
        variant_times.append(_seconds(variant, x))
    f, v = statistics.median(fp_times), statistics.median(variant_times)
    return v / f, f, v


@pytest.fixture(scope="module")
def swinir():
    from models import create_model
    torch.manual_seed(0)
    return create_model("swinir-light", SCALE, weights="random")


@pytest.fixture(scope="module")
def calib_batch(train_root):
    from bench.data.calib import calibration_batch
    return calibration_batch(train_root, SCALE, n=32, patch=64, seed=0)


@pytest.mark.benchmark(group="dobi")
def test_dobi_all_384_quantizers_within_3_fp_forwards(benchmark, swinir, calib_batch):
    method = create_method("dobi")  # the paper variant; the code variant searches one candidate fewer
    ctx = CalibContext(fp_model=swinir, calib_batch=calib_batch, progress=False)
    fp_times, qmodels = [], []

    def fp_then_fresh_model():  # FP, DOBI, FP, DOBI, FP: each DOBI round between two FP forwards
        fp_times.append(_seconds(swinir, calib_batch))
        qmodels.append(quantize_model(swinir, QuantConfig(4, 4)))
        return (qmodels[-1], ctx), {}

    benchmark.pedantic(method.calibrate, setup=fp_then_fresh_model, rounds=2, iterations=1)
    fp_times.append(_seconds(swinir, calib_batch))
    fp = statistics.median(fp_times)
    ratio = benchmark.stats.stats.median / fp
    benchmark.extra_info.update(fp_seconds=fp, fp_all=fp_times, fp_forwards=ratio)
    qmodel = qmodels[-1]
    assert len(quantizers(qmodel)) == 384 and all(q.calibrated for _, q in quantizers(qmodel))
    assert ratio <= DOBI_TARGET, f"DOBI took {ratio:.2f} FP forwards (target {DOBI_TARGET})"


def _w4a4(model, batch):
    qmodel, _ = quantize_with_method(model, create_method("minmax"), 4, 4, CalibContext(calib_batch=batch, progress=False))
    return qmodel.eval()


@pytest.mark.benchmark(group="fake-quant")
def test_swinir_light_w4a4_fake_quant_within_1_3x_fp(benchmark, swinir, calib_batch):
    x = calib_batch[:8]
    qmodel = _w4a4(swinir, calib_batch[:2])
    ratio, fp, fq = benchmark.pedantic(interleaved_ratio, args=(swinir, qmodel, x), rounds=1, iterations=1)
    benchmark.extra_info.update(fp_seconds=fp, fake_quant_seconds=fq, ratio=ratio, input="8x3x64x64")
    assert ratio <= FAKE_QUANT_TARGET, f"fake-quant/FP = {ratio:.2f} (target {FAKE_QUANT_TARGET})"


@pytest.mark.benchmark(group="fake-quant")
def test_imdn_w4a4_fake_quant_within_1_3x_fp(benchmark, weights_dir, train_root):
    from bench.data.calib import calibration_batch
    from models import create_model
    imdn = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    batch = calibration_batch(train_root, 2, n=32, patch=64, seed=0)
    qmodel = _w4a4(imdn, batch[:2])
    ratio, fp, fq = benchmark.pedantic(interleaved_ratio, args=(imdn, qmodel, batch[:8]), rounds=1, iterations=1)
    benchmark.extra_info.update(fp_seconds=fp, fake_quant_seconds=fq, ratio=ratio, input="8x3x64x64")
    assert ratio <= FAKE_QUANT_TARGET, f"fake-quant/FP = {ratio:.2f} (target {FAKE_QUANT_TARGET})"


def _train_step_seconds(model, x, bounds) -> float:
    """Forward and backward of an L1 loss (the distillation target is irrelevant to the cost), gradients dropped."""
    start = time.perf_counter()
    model(x).abs().mean().backward()
    elapsed = time.perf_counter() - start
    for t in (*bounds, x):
        t.grad = None
    return elapsed


def interleaved_train_steps(fp, qmodel, x, bounds, monkeypatch, rounds: int = 3) -> dict[str, float]:
    """Median seconds of an FP step (input requires grad, so the whole backward runs), the one-node path's step
    and the composite's step, timed in turns after one warm-up each."""
    from bench.quant.quantizer import STE_SWITCH
    variants = {"fp": (fp, x.clone().requires_grad_(True), "1"), "one_node": (qmodel, x, "1"),
                "composite": (qmodel, x, "0")}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(rounds + 1):
        for name, (model, inp, switch) in variants.items():
            monkeypatch.setenv(STE_SWITCH, switch)
            seconds = _train_step_seconds(model, inp, bounds if model is qmodel else [])
            if rep:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


@pytest.mark.benchmark(group="fine-tuning")
def test_fine_tuning_step_within_2_75x_fp_and_0_8x_the_composite(benchmark, monkeypatch):
    from pathlib import Path

    from bench.data.calib import calibration_batch
    from bench.data.sample import sample_train_dir
    from methods.finetune import only_training
    from models import create_model
    weights = Path(__file__).resolve().parents[1] / "models" / "weights" / "swinir-light_x2.safetensors"
    fp = create_model("swinir-light", 2, weights=weights)
    for p in fp.parameters():
        p.requires_grad_(False)
    batch = calibration_batch(sample_train_dir(), 2, n=4, patch=32, seed=0)  # the demo's calibration
    qmodel, _ = quantize_with_method(fp, create_method("dobi", variant="paper"), 4, 4,
                                     CalibContext(calib_batch=batch, progress=False), scope="2dquant")
    bounds = [p for name, p in qmodel.named_parameters() if name.endswith(("lower", "upper"))]
    with only_training(qmodel, bounds):
        t = benchmark.pedantic(interleaved_train_steps, args=(fp, qmodel, batch[:2], bounds, monkeypatch),
                               rounds=1, iterations=1)
    vs_fp, vs_composite = t["one_node"] / t["fp"], t["one_node"] / t["composite"]
    benchmark.extra_info.update(**{f"{k}_seconds": v for k, v in t.items()}, ratio_fp=vs_fp,
                                ratio_composite=vs_composite, input="2x3x32x32 (demo)")
    assert vs_fp <= TRAIN_STEP_TARGET, f"fine-tuning step / FP step = {vs_fp:.2f} (target {TRAIN_STEP_TARGET})"
    assert vs_composite <= TRAIN_STEP_VS_COMPOSITE, \
        f"one-node / composite step = {vs_composite:.2f} (target {TRAIN_STEP_VS_COMPOSITE})"
