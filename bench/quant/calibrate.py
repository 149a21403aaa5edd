"""Feed range rules with the tensors each quantizer sees (spec §3.1).

`capture_activations` runs the quantized model as the FP model (weight quantizers off, every activation
quantizer passing its input through) and hands each activation quantizer's input to `fn` *inside* the
forward pass, so a rule can consume the tensor and drop it: the activations of SwinIR-light on a 32x64x64
batch (~10 GB in total) are never held at once. `capture_weights` does the same for weights.

With `workers=k`, `fn` runs on k threads beside the forward (a range rule's numpy sort holds one core while the
forward would use all of them): at most k + 1 tensors wait at once, so memory stays bounded. `fn` must then be
thread-safe. A tensor changed in place by the model before its `fn` finished (its version counter moved) would
give other bounds than a synchronous capture, so the whole capture is then repeated without workers.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.nn as nn

from bench.quant import range_search
from bench.quant.quantizer import FakeQuantizer
from bench.quant.surgery import activation_quantizers, weight_quantizers

# fn(name, quantizer, tensor): typically computes bounds and calls quantizer.set_bounds.
TensorFn = Callable[[str, FakeQuantizer, torch.Tensor], None]


def _observer(name: str, quantizer: FakeQuantizer, fn: TensorFn, seen: set[str]) -> Callable[[torch.Tensor], None]:
    def observe(x: torch.Tensor) -> None:
        if name not in seen:  # the first call of this forward pass only (spec §3.1)
            seen.add(name)
            fn(name, quantizer, x.detach())
    return observe


@torch.no_grad()
def capture_activations(qmodel: nn.Module, batch: torch.Tensor, fn: TensorFn, chunk: int | None = None,
                        workers: int = 0) -> None:
    """One no-grad FP forward of `batch`; `fn(name, quantizer, x)` on each activation quantizer's first call.

    chunk=None (the 2DQuant protocol): one forward of the whole batch, so x is the full tensor.
    chunk=k: forwards of k samples at a time and `fn` is called once per quantizer *per chunk*: for
    streaming statistics (EMA, running means); rules that need the full tensor must leave chunk=None.
    workers=k > 0: `fn` runs on k threads while the forward goes on (module docstring); same results.
    """
    try:
        if workers > 0 and _capture_concurrently(qmodel, batch, fn, chunk, workers):
            return
        _capture(qmodel, batch, fn, chunk)
    finally:
        range_search.clear_cache()  # the last sorted activations are not needed after the capture


def _capture_concurrently(qmodel: nn.Module, batch: torch.Tensor, fn: TensorFn, chunk: int | None,
                          workers: int) -> bool:
    """The capture with `fn` on worker threads; False (nothing left half-done) when a tensor changed in place."""
    slots = threading.BoundedSemaphore(workers + 1)
    changed = threading.Event()
    futures: list[Future] = []

    def run(name: str, q: FakeQuantizer, x: torch.Tensor, version: int) -> None:
        try:
            fn(name, q, x)
            if x._version != version:
                changed.set()
        finally:
            slots.release()

    def submit(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
        slots.acquire()
        futures.append(pool.submit(run, name, q, x, x._version))

    with ThreadPoolExecutor(workers, thread_name_prefix="capture") as pool:
        try:
            _capture(qmodel, batch, submit, chunk)
        finally:
            for future in futures:  # wait for every task before anything else (no work left behind)
                future.exception()
    for future in futures:
        future.result()  # the first error of `fn`, raised here
    return not changed.is_set()


def _capture(qmodel: nn.Module, batch: torch.Tensor, fn: TensorFn, chunk: int | None) -> None:
    acts = activation_quantizers(qmodel)
    weights = [q for _, q, _ in weight_quantizers(qmodel)]
    saved_enabled = {id(q): q.enabled for q in weights}
    was_training = qmodel.training
    qmodel.eval()  # SwinIR's DropPath must stay off (spec §1)
    try:
        for q in weights:
            q.enabled = False
        step = batch.shape[0] if not chunk else int(chunk)
        for start in range(0, batch.shape[0], step):
            seen: set[str] = set()
            for name, q in acts:
                q.observer = _observer(name, q, fn, seen)
            qmodel(batch[start:start + step])
    finally:
        for _, q in acts:
            q.observer = None
        for q in weights:
            q.enabled = saved_enabled[id(q)]
        qmodel.train(was_training)


@torch.no_grad()
def capture_weights(qmodel: nn.Module, fn: TensorFn) -> None:
    """`fn(name, quantizer, weight)` for every weight quantizer (the FP weight tensor it quantizes)."""
    for name, q, weight in weight_quantizers(qmodel):
        fn(name, q, weight.detach())
