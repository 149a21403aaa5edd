"""Range rules on worker threads beside the capture forward (bench.quant.calibrate, workers=k): the same bounds as
the synchronous capture, bounded waiting, errors raised, and a synchronous rerun when the model changes a captured
tensor in place."""
from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn as nn

import methods.base as methods_base
from bench.quant import CalibContext, QuantConfig, activation_quantizers, capture_activations, quantize_model, quantizers
from methods.dobi import DOBI
from methods.registry import create_method

pytestmark = pytest.mark.usefixtures("one_thread")


def _bounds(qmodel):
    return {name: (q.lower.detach().clone(), q.upper.detach().clone()) for name, q in quantizers(qmodel)}


@pytest.mark.parametrize("method", ["dobi", "percentile"])
def test_worker_threads_give_the_synchronous_bounds_on_swinir(method, monkeypatch):
    from models import create_model
    torch.manual_seed(0)
    fp = create_model("swinir-light", 2, weights="random")
    batch = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    # DOBI's default streamed search runs on the forward's thread (rule_workers 0); its sorted search beside it
    rule = create_method(method, **({"search": "sorted"} if method == "dobi" else {}))
    assert type(rule).thread_safe_range
    results, threads = [], []
    original = type(rule).range

    def recording_range(self, x, q):
        if not q.is_weight:
            threads.append(threading.current_thread().name)
        return original(self, x, q)
    monkeypatch.setattr(type(rule), "range", recording_range)
    monkeypatch.setattr(methods_base, "capture_workers", lambda: 1)  # a worker even on a 1-CPU runner
    for threaded in (True, False):
        monkeypatch.setattr(type(rule), "thread_safe_range", threaded)
        qmodel = quantize_model(fp, QuantConfig(4, 4))
        threads.clear()
        rule.calibrate(qmodel, CalibContext(fp_model=fp, calib_batch=batch, progress=False))
        results.append(_bounds(qmodel))
        on_workers = sum(name.startswith("capture") for name in threads)
        assert len(threads) == len(activation_quantizers(qmodel))  # once per activation quantizer
        assert (0 < on_workers <= len(threads)) if threaded else on_workers == 0  # where the rule ran
    threaded, synchronous = results
    assert len(threaded) == len(quantizers(qmodel)) > 100
    for name, (lower, upper) in synchronous.items():
        assert torch.equal(threaded[name][0], lower) and torch.equal(threaded[name][1], upper), name


class _InPlaceAfterUse(nn.Module):
    """conv -> the conv's input is then changed in place (as an in-place activation on a skip would)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        h = self.head(x)
        y = self.conv(h)
        h.mul_(10.0)  # after the conv's input quantizer saw h
        return y + h


def _synchronous_maxima(qmodel, batch) -> list[tuple[str, float]]:
    """(name, max |x|) of each activation quantizer's input, in call order, from a capture without workers."""
    maxima = []
    capture_activations(qmodel, batch, lambda name, q, x: maxima.append((name, float(x.abs().max()))))
    return maxima


def test_a_tensor_changed_in_place_while_queued_reruns_the_capture_synchronously():
    torch.manual_seed(0)
    qmodel = quantize_model(_InPlaceAfterUse(), QuantConfig(8, 8, scope="ptq4sr"))
    batch = torch.randn(1, 2, 8, 8)
    seen = []

    def slow_max(name, q, x):
        time.sleep(0.05)  # the forward goes on (and changes h) before this finishes
        seen.append((name, threading.current_thread().name, float(x.abs().max())))

    capture_activations(qmodel, batch, slow_max, workers=2)
    synchronous = _synchronous_maxima(qmodel, batch)
    assert len(seen) == 2 * len(synchronous)  # the threaded pass (every call), then the rerun
    threaded_pass, rerun = seen[:len(synchronous)], seen[len(synchronous):]
    assert any(thread.startswith("capture") for _, thread, _ in threaded_pass)
    assert not any(thread.startswith("capture") for _, thread, _ in rerun)  # the rerun is synchronous
    assert [(name, value) for name, _, value in rerun] == synchronous  # and gives its values


class _Chain(nn.Module):
    def __init__(self, n: int = 12):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 3, padding=1) for _ in range(n))

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
            time.sleep(0.005)  # a forward slower than a thread start, faster than the worker's calls
        return x


def test_when_every_slot_is_taken_the_forward_thread_runs_the_call_and_keeps_the_other_threads():
    torch.manual_seed(0)
    qmodel = quantize_model(_Chain(), QuantConfig(8, 8, scope="ptq4sr"))
    batch = torch.randn(1, 2, 8, 8)
    calls = []

    def slow_max(name, q, x):
        if threading.current_thread().name.startswith("capture"):
            time.sleep(0.05)  # a slow worker: the forward must not wait for it
        calls.append((name, threading.current_thread().name, torch.get_num_threads(), float(x.abs().max())))

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        capture_activations(qmodel, batch, slow_max, workers=1)
        assert torch.get_num_threads() == 2  # restored after the capture
    finally:
        torch.set_num_threads(saved)
    synchronous = _synchronous_maxima(qmodel, batch)
    here = [c for c in calls if not c[1].startswith("capture")]
    assert here and len(here) < len(calls)  # both the worker and the forward's thread ran calls
    assert all(threads == 1 for _, _, threads, _ in calls)  # 2 threads - 1 worker, while the capture ran
    assert sorted((name, value) for name, _, _, value in calls) == sorted(synchronous)  # each once, same values


def test_a_rule_error_on_a_worker_is_raised_and_nothing_is_left_running():
    torch.manual_seed(0)
    qmodel = quantize_model(_InPlaceAfterUse(), QuantConfig(8, 8, scope="ptq4sr"))

    def failing(name, q, x):
        raise ValueError(f"bad tensor at {name}")

    before = threading.active_count()
    with pytest.raises(ValueError, match="bad tensor"):
        capture_activations(qmodel, torch.randn(1, 2, 8, 8), failing, workers=2)
    assert threading.active_count() == before


def test_dobi_declares_its_rule_thread_safe_and_minmax_does_not():
    assert DOBI.thread_safe_range and not type(create_method("minmax")).thread_safe_range


class _FailsAfterOneLayer(_Chain):
    def forward(self, x):
        self.convs[0](x)
        raise RuntimeError("the model broke mid-forward")


def test_an_error_in_the_forward_is_raised_at_once_and_stops_the_workers():
    qmodel = quantize_model(_FailsAfterOneLayer(), QuantConfig(8, 8, scope="ptq4sr"))
    before, saved = threading.active_count(), torch.get_num_threads()
    with pytest.raises(RuntimeError, match="broke mid-forward"):
        capture_activations(qmodel, torch.randn(1, 2, 8, 8), lambda name, q, x: time.sleep(0.05), workers=2)
    assert threading.active_count() == before and torch.get_num_threads() == saved
