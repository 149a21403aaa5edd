"""Measured latency: median wall time of N forward passes on one fixed LR input.

Quantized models here are fake-quant (simulated quantization in FP32), so their latency is labelled
"fake-quant": it shows the overhead of simulation, not what an integer kernel would achieve.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn as nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_latency_ms(model: nn.Module, lr_size: int, runs: int, device: torch.device,
                      warmup: int = 1, seed: int = 0) -> float | None:
    """Median milliseconds per forward of a (1, 3, lr_size, lr_size) input; None when runs == 0."""
    if runs <= 0:
        return None
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, lr_size, lr_size, generator=generator).to(device)
    times = []
    with torch.no_grad():
        for i in range(warmup + runs):
            _sync(device)
            start = time.perf_counter()
            model(x)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
