"""Feed range rules with the tensors each quantizer sees (spec §3.1).

`capture_activations` runs the quantized model as the FP model (weight quantizers off, every activation
quantizer passing its input through) and hands each activation quantizer's input to `fn` *inside* the
forward pass, so a rule can consume the tensor and drop it: the activations of SwinIR-light on a 32x64x64
batch (~10 GB in total) are never held at once. `capture_weights` does the same for weights.

With `workers=k`, `fn` runs on k threads beside the forward, which keeps the remaining intra-op threads (at
least one): a range rule's numpy sort holds one core, and an OpenMP forward sharing its cores with it waits at
every barrier for a descheduled thread. When k + 3 calls already wait or run on the workers, the forward's own
thread makes the next call itself instead of waiting (caller runs), and after the forward it takes the calls no
worker has started: every thread stays busy and memory stays bounded. `fn` must then be thread-safe. A tensor
changed in place by the model before its `fn` finished (its version counter moved) would give other bounds than
a synchronous capture, so the whole capture is then repeated without workers.
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch
import torch.nn as nn

from bench.quant import range_search
from bench.quant.quantizer import FakeQuantizer
from bench.quant.surgery import activation_quantizers, weight_quantizers

# Calls that may wait for a worker besides those running: enough to keep the workers busy while the forward's
# thread runs a long call itself (DOBI on the speed benchmark, 1 worker: 19.2 s with 1, 17.5 s with 2, 17.3 s
# with 3, 17.4 s with 5). Each waiting call holds its tensor (up to 200 MB for SwinIR-light's attention maps).
_SPARE_SLOTS = 3

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
    tasks = _Tasks(fn, workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - workers))
    try:
        try:
            _capture(qmodel, batch, tasks.submit, chunk)
        except BaseException:
            tasks.close(drain=False)
            raise
        tasks.close(drain=True)
    finally:
        torch.set_num_threads(threads)
    return not tasks.changed


class _Tasks:
    """Calls of `fn` on `workers` threads, at most workers + _SPARE_SLOTS of them waiting or running there.

    When that many are outstanding, `submit` runs the call on the calling thread (caller runs), so the forward
    never waits; `close(drain=True)` lets the calling thread take the calls still waiting, then joins the
    workers and raises the first error of `fn`. Tensors are dropped as soon as their call is done.
    Not a ThreadPoolExecutor: its queued work items keep their tensors alive until they run, and a cancelled
    one cannot be handed back to the calling thread.
    """

    def __init__(self, fn: TensorFn, workers: int) -> None:
        self._fn = fn
        self._limit = workers + _SPARE_SLOTS
        self._pending: deque[tuple[str, FakeQuantizer, torch.Tensor, int]] = deque()
        self._outstanding = 0
        self._closed = False
        self._errors: list[BaseException] = []
        self._lock = threading.Condition()
        self.changed = False  # a tensor's version moved while its call ran
        self._threads = [threading.Thread(target=self._work, name=f"capture-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
        task = (name, q, x, x._version)
        with self._lock:
            queued = self._outstanding < self._limit
            if queued:
                self._outstanding += 1
                self._pending.append(task)
                self._lock.notify()
        if not queued:
            self._run(task, counted=False)

    def close(self, drain: bool) -> None:
        with self._lock:
            self._closed = True
            if not drain:
                self._pending.clear()
            self._lock.notify_all()
        while (task := self._next(block=False)) is not None:
            self._run(task)
            del task  # the tensor goes as soon as its call is done
        for thread in self._threads:
            thread.join()
        if drain and self._errors:
            raise self._errors[0]

    def _next(self, block: bool):
        with self._lock:
            while block and not self._pending and not self._closed:
                self._lock.wait()
            if not self._pending:
                return None
            return self._pending.popleft()

    def _work(self) -> None:
        while (task := self._next(block=True)) is not None:
            self._run(task)
            del task  # not held while this thread waits for the next one

    def _run(self, task, counted: bool = True) -> None:
        name, q, x, version = task
        try:
            if not self._errors:  # after an error the remaining calls are skipped
                self._fn(name, q, x)
                if x._version != version:
                    self.changed = True
        except Exception as error:  # raised by close(); a KeyboardInterrupt on this thread stops the forward at once
            self._errors.append(error)
        finally:
            if counted:
                with self._lock:
                    self._outstanding -= 1


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
