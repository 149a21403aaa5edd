"""Measured latency: median wall time of N forward passes on one fixed LR input.

Quantized models here are fake-quant (simulated quantization in FP32), so their latency is labelled
"fake-quant": it shows the overhead of simulation, not what an integer kernel would achieve.
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_latency_ms(model: nn.Module, lr_size: int, runs: int, device: torch.device,
                      warmup: int | None = None, seed: int = 0) -> float | None:
    """Median milliseconds per forward of a (1, 3, lr_size, lr_size) input; None when runs == 0.

    `warmup` untimed forwards first (default: one, except for a single CPU run, where allocator warm-up is
    negligible next to the forward itself; GPUs always get one, for kernel selection and lazy init).
    """
    if runs <= 0:
        return None
    if warmup is None:
        warmup = 1 if runs > 1 or device.type == "cuda" else 0
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
