"""Measured latency: N timed forward passes per model on one fixed LR input, after warm-up, interleaved.

One timing of each model under whatever load there was is noise (the same graph measured 606 ms and
27,506 ms on a shared CPU). So:
  * every model gets `warmup` untimed forwards first (allocator, lazy init, kernel selection);
  * the models compared (FP and a quantized copy) are timed in turns, round by round, in an order rotated
    each round, so that a burst of load hits every model of the comparison alike;
  * the record keeps all N times; reports show the median and the spread (interquartile range) with N.
Quantized models here are fake-quant (simulated quantization in FP32), so their latency is labelled
"fake-quant": it shows the overhead of simulation, not what an integer kernel would achieve.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_WARMUP = 1


@dataclass(frozen=True)
class Timing:
    """Milliseconds of each timed forward of one model, and how many untimed forwards preceded them."""
    times_ms: tuple[float, ...]
    warmup: int

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def spread_ms(times_ms: Sequence[float]) -> tuple[float, float]:
    """(first quartile, third quartile) of the times; (t, t) for a single run."""
    if len(times_ms) < 2:
        return float(times_ms[0]), float(times_ms[0])
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return q1, q3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_forward(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    model(x)
    _sync(device)
    return (time.perf_counter() - start) * 1000.0


def interleaved_timings(models: Sequence[nn.Module], lr_size: int, runs: int, device: torch.device,
                        warmup: int = DEFAULT_WARMUP, seed: int = 0) -> list[Timing] | None:
    """One Timing per model (None when runs == 0): `warmup` forwards each, then `runs` rounds in which
    every model is timed once, the order rotated by one model per round."""
    if runs <= 0:
        return None
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, lr_size, lr_size, generator=generator).to(device)
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            for _ in range(warmup):
                _timed_forward(model, x, device)
        for round_index in range(runs):
            for offset in range(len(models)):
                index = (round_index + offset) % len(models)
                times[index].append(_timed_forward(models[index], x, device))
    return [Timing(tuple(t), warmup) for t in times]


def median_latency_ms(model: nn.Module, lr_size: int, runs: int, device: torch.device,
                      warmup: int | None = None, seed: int = 0) -> float | None:
    """Median milliseconds per forward of a (1, 3, lr_size, lr_size) input after warm-up; None when runs == 0."""
    timings = interleaved_timings([model], lr_size, runs, device, DEFAULT_WARMUP if warmup is None else warmup, seed)
    return None if timings is None else timings[0].median_ms


def fill_latency(record, timing: Timing | None, fp_timing: Timing | None, kind: str, lr_size: int) -> None:
    """The latency fields of a CellRecord: medians, every time, N and the warm-up. For a quantized cell,
    `fp_timing` is the FP model timed in turns with it (the fair reference); for FP it is `timing` itself."""
    record.latency_kind, record.latency_lr_size = kind, lr_size
    if timing is None:
        return
    record.latency_ms, record.latency_runs, record.latency_warmup = timing.median_ms, timing.runs, timing.warmup
    record.latency_times_ms = list(timing.times_ms)
    if fp_timing is not None:
        record.latency_fp_ms, record.latency_fp_times_ms = fp_timing.median_ms, list(fp_timing.times_ms)
