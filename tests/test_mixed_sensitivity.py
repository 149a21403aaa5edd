"""Per-layer sensitivity (bench.mixed.sensitivity): scores equal independently built models' output MSE, the
Hutchinson traces equal the exact Hessian's, results are cached, and the chart is drawn."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.mixed.sensitivity import (
    SensitivityResult,
    SensitivitySettings,
    hutchinson_traces,
    measure_sensitivity,
    method_calibrator,
    plot_sensitivity,
    sensitivity_figure,
)
from bench.quant import QuantConfig, quantize_model, quantizers

CANDIDATES = (2, 4, 8)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.Conv2d(8, 12, 1)
        self.b3 = nn.Conv2d(12, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.head(x))
        y = torch.relu(self.b3(torch.relu(self.b2(torch.relu(self.b1(y)))))) + y
        return self.tail(y) + x


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = Net().eval()
    gen = torch.Generator().manual_seed(1)
    calib, score = torch.rand(4, 3, 16, 16, generator=gen), torch.rand(4, 3, 16, 16, generator=gen)
    return model, calib, score


def _settings(context: str = "context", criterion: str = "mse") -> SensitivitySettings:
    return SensitivitySettings("emmse", scope="ptq4sr", like=4, candidates=CANDIDATES, criterion=criterion,
                               context=context, hutchinson_samples=100, hutchinson_batch=2)


def _mse_of(model, qmodel, batch) -> float:
    with torch.no_grad():
        return float(torch.mean((qmodel(batch).double() - model(batch).double()) ** 2))


def _stitched(model, layer, pair, calibrate, like, enabled_rest: bool, context: dict | None = None):
    """The model with `layer` at `pair` (and the `context` layers at theirs), built by surgery and bounds copied
    by name from each bit-width's calibration (not by swapping modules)."""
    layer_bits = {**(context or {}), layer: pair}
    qmodel = quantize_model(model, QuantConfig(like[0], like[1], "ptq4sr", layer_bits=layer_bits)).eval()
    sources = {name: q for name, q in quantizers(calibrate(like))}
    for path, bits in layer_bits.items():
        sources.update({name: q for name, q in quantizers(calibrate(bits)) if name.startswith(path + ".")})
    for name, q in quantizers(qmodel):
        assert q.bits == sources[name].bits
        q.set_bounds(sources[name].lower.detach(), sources[name].upper.detach())
        q.enabled = enabled_rest or name.startswith(layer + ".")
    return qmodel


@pytest.mark.parametrize("context", ["context", "alone"])
def test_mse_scores_equal_the_output_mse_of_the_model_with_that_layer_changed(setup, context):
    model, calib, score = setup
    settings = _settings(context)
    calibrate = method_calibrator(model, settings, calib)
    result = measure_sensitivity(model, "net", 1, settings, calib, score, calibrate=calibrate, use_cache=False)
    assert result.layers == ["b1", "b2", "b3"]  # head and tail: ptq4sr's fixed 8-bit edges
    for layer in result.layers:
        for pair in result.settings.candidates:
            expected = _mse_of(model, _stitched(model, layer, pair, calibrate, (4, 4), context == "context"), score)
            assert result.scores[layer][pair] == expected, (layer, pair)
    # lower bits hurt more, in every layer (EMMSE bounds per bit-width)
    for row in result.scores.values():
        assert row[(2, 2)] > row[(4, 4)] > row[(8, 8)] or context == "context"
        assert row[(2, 2)] > row[(8, 8)]
    if context == "context":
        assert all(row[(4, 4)] == result.baseline > 0 for row in result.scores.values())


def test_refinement_scores_each_layer_in_the_context_of_an_allocation(setup):
    model, calib, score = setup
    allocation = {"b1": (2, 2), "b3": (8, 8)}
    settings = SensitivitySettings("emmse", scope="ptq4sr", like=4, candidates=CANDIDATES, context_bits=allocation)
    calibrate = method_calibrator(model, settings, calib)
    result = measure_sensitivity(model, "net", 1, settings, calib, score, calibrate=calibrate, use_cache=False)
    assert result.baseline == _mse_of(model, _stitched(model, "b2", (4, 4), calibrate, (4, 4), True, allocation),
                                      score)
    for layer in result.layers:
        for pair in result.settings.candidates:
            expected = _mse_of(model, _stitched(model, layer, pair, calibrate, (4, 4), True, allocation), score)
            assert result.scores[layer][pair] == expected, (layer, pair)
    assert result.scores["b1"][(2, 2)] == result.scores["b3"][(8, 8)] == result.baseline


def test_hutchinson_traces_match_the_exact_hessian(setup):
    model, _, score = setup
    batch = score[:1, :, :8, :8]
    traces = hutchinson_traces(model, ["b2"], batch, samples=1000, seed=0)
    conv = model.b2
    weight = conv.weight.detach().clone()
    with torch.no_grad():
        reference = model(batch)

    def loss_of(w):
        original = conv.weight
        try:
            del conv.weight
            conv.weight = w
            return torch.mean((model(batch) - reference) ** 2)
        finally:
            conv.weight = original

    hessian = torch.autograd.functional.hessian(loss_of, weight)
    exact = float(hessian.reshape(weight.numel(), weight.numel()).diagonal().sum())
    tr_w, n_w, tr_x, n_x = traces["b2"]
    assert n_w == 96 and n_x == 8 * 8 * 8
    assert tr_w == pytest.approx(exact, rel=0.05)
    assert tr_x > 0


def test_hawq_scores_are_trace_times_quantization_error_and_rank_bits(setup):
    model, calib, score = setup
    settings = _settings(criterion="hawq-v2")
    assert settings.context == "alone"  # the FP model's Hessian
    result = measure_sensitivity(model, "net", 1, settings, calib, score, use_cache=False)
    for row in result.scores.values():
        assert row[(2, 2)] > row[(4, 4)] > row[(8, 8)] > 0


def test_results_are_cached_and_round_trip_through_json(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    model, calib, score = setup
    settings = _settings()
    first = measure_sensitivity(model, "net", 1, settings, calib, score)
    files = list((tmp_path / "cache" / "sensitivity").glob("net_x1_emmse_mse_context_*.json"))
    assert len(files) == 1 and not first.cached
    again = measure_sensitivity(model, "net", 1, settings, calib, score)
    assert again.cached and again.scores == first.scores and again.settings == first.settings
    other = measure_sensitivity(model, "net", 1, settings, calib, score.flip(-1))
    assert not other.cached and other.scores != first.scores
    assert SensitivityResult.from_dict(json.loads(json.dumps(first.to_dict()))).scores == first.scores
    with pytest.raises(ConfigError, match="score batch is the calibration batch"):
        measure_sensitivity(model, "net", 1, settings, calib, calib)
    png, pdf = plot_sensitivity(first, tmp_path / "sens.png")
    assert png.stat().st_size > 10_000 and pdf.is_file()
    fig = sensitivity_figure(first)
    ax = fig.axes[0]
    fig.canvas.draw()
    # the legend lies outside the plotting area, and the bars draw the scores (in context: minus the context's MSE)
    assert not ax.get_legend().get_window_extent().overlaps(ax.get_window_extent())
    heights = [bar.get_height() for bar in ax.containers[0]]
    expected = [first.scores[layer][(2, 2)] - first.baseline for layer in first.layers]
    assert heights == pytest.approx(expected, rel=1e-12)
    assert first.table().splitlines()[0].split() == ["layer", "w2a2", "w4a4", "w8a8"]


def test_the_cache_key_reads_the_methods_defaults(setup):
    """`emmse` and `emmse` with its default parameters written out calibrate alike: one cache entry (a matrix
    cell names a method bare, a script passes describe()'s parameters); another value is another entry."""
    from bench.mixed.sensitivity import cache_path
    model, calib, score = setup
    bare = cache_path(model, "net", 1, _settings(), calib, score)
    spelled = dataclasses.replace(_settings(), params={"chunk": 0, "search": "sorted"})
    assert cache_path(model, "net", 1, spelled, calib, score) == bare
    other = dataclasses.replace(_settings(), params={"search": "brute"})
    assert cache_path(model, "net", 1, other, calib, score) != bare
