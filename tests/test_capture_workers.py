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
    rule = create_method(method)
    assert type(rule).thread_safe_range
    results, threads = [], []
    original = type(rule).range

    def recording_range(self, x, q):
        threads.append(threading.current_thread().name)
        return original(self, x, q)
    monkeypatch.setattr(type(rule), "range", recording_range)
    monkeypatch.setattr(methods_base, "available_cpus", lambda: 2)  # workers even on a 1-CPU runner
    for threaded in (True, False):
        monkeypatch.setattr(type(rule), "thread_safe_range", threaded)
        qmodel = quantize_model(fp, QuantConfig(4, 4))
        threads.clear()
        rule.calibrate(qmodel, CalibContext(fp_model=fp, calib_batch=batch, progress=False))
        results.append(_bounds(qmodel))
        on_workers = sum(name.startswith("capture") for name in threads)
        assert on_workers == (len(activation_quantizers(qmodel)) if threaded else 0)  # where the rule ran
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


def test_a_tensor_changed_in_place_while_queued_reruns_the_capture_synchronously():
    torch.manual_seed(0)
    qmodel = quantize_model(_InPlaceAfterUse(), QuantConfig(8, 8, scope="ptq4sr"))
    batch = torch.randn(1, 2, 8, 8)
    seen = []

    def slow_max(name, q, x):
        time.sleep(0.05)  # the forward goes on (and changes h) before this finishes
        seen.append((name, threading.current_thread().name, float(x.abs().max())))

    capture_activations(qmodel, batch, slow_max, workers=2)
    synchronous = []
    capture_activations(qmodel, batch, lambda name, q, x: synchronous.append((name, float(x.abs().max()))))
    threaded_pass = [s for s in seen if s[1].startswith("capture")]
    rerun = [(name, value) for name, thread, value in seen if not thread.startswith("capture")]
    assert threaded_pass and rerun == synchronous  # the rerun is synchronous and gives its values


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
