"""Figures a reviewer can trust: one colour per method, honest PSNR ranges, no empty figures, latency with
its median, spread and N; and the interleaved latency measurement behind them (no model runs but tiny ones)."""
from __future__ import annotations

import matplotlib.colors as mcolors
import pytest
import torch
from torch import nn

from bench.runner import plots
from bench.runner.latency import Timing, interleaved_timings, spread_ms
from bench.runner.tables import display_names


def _record(label, method, bits, psnr, size=None, times=None, fp_times=None, dataset="Set5"):
    return {"model": "swinir-light", "scale": 2, "label": label, "method": method, "status": "ok",
            "method_params": {"iters": 10} if label == "2dquant-tiny" else {},
            "w_bits": bits, "a_bits": bits, "dataset": dataset, "dataset_label": f"{dataset}[crop64]",
            "crop": 64, "is_subset": True, "images": 5, "expected_images": 5, "psnr": psnr, "ssim": 0.9,
            "model_size_bytes": size, "latency_ms": None if not times else sorted(times)[len(times) // 2],
            "latency_times_ms": times, "latency_fp_times_ms": fp_times, "latency_runs": len(times or []),
            "latency_warmup": 1 if times else None, "latency_lr_size": 64}


TIMES = [10.0, 11.0, 12.0, 13.0, 30.0]   # median 12, quartiles 11 and 13: the 30 ms outlier does not move it
FP_TIMES = [8.0, 8.0, 9.0, 9.0, 9.0]


def _run(tied: bool = False) -> list[dict]:
    psnr = {"minmax": 32.611, "dobi": 32.613, "2dquant-tiny": 32.608} if tied else \
           {"minmax": 30.1, "dobi": 31.5, "2dquant-tiny": 31.9}
    records = [_record("fp", "fp", 32, 32.62, 3_600_000, FP_TIMES, FP_TIMES), _record("bicubic", "bicubic", None, 31.6)]
    for label, method in (("minmax", "minmax"), ("dobi", "dobi"), ("2dquant-tiny", "2dquant")):
        for bits, size in ((4, 1_170_000), (2, 1_000_000)):
            records.append(_record(label, method, bits, psnr[label] - (4 - bits), size, TIMES, FP_TIMES))
    return records


@pytest.fixture
def figures(monkeypatch):
    """The figures plot_run draws, by file stem, instead of writing them."""
    drawn = {}

    def keep(fig, out_dir, stem):
        drawn[stem] = fig
        return [out_dir / f"{stem}.png"]

    monkeypatch.setattr(plots, "_save", keep)
    return drawn


def _same(a, b) -> bool:
    return mcolors.to_rgba(a) == mcolors.to_rgba(b)


def test_each_method_keeps_one_colour_in_every_figure(figures, tmp_path):
    plots.plot_run(_run(), tmp_path)
    assert sorted(figures) == ["swinir-light_x2_latency", "swinir-light_x2_psnr_vs_bits", "swinir-light_x2_psnr_vs_size"]
    expected = {"MinMax": "tab:blue", "DOBI": "tab:purple", "2DQuant (10 DQC steps)": "tab:brown"}
    for stem, kind in (("swinir-light_x2_psnr_vs_bits", ""), ("swinir-light_x2_psnr_vs_size", " (cost model)")):
        lines = {line.get_label(): line.get_color() for line in figures[stem].axes[0].get_lines()}
        assert all(_same(lines[name + kind], colour) for name, colour in expected.items()), (stem, lines)
        assert _same(lines["FP" + kind], "black")
    ax = figures["swinir-light_x2_latency"].axes[0]
    bars = [p for p in ax.patches if p.get_width() == 12.0]  # the quantized medians, W4A4 then W2A2 per method
    assert [mcolors.to_hex(b.get_facecolor()) for b in bars] == \
           [mcolors.to_hex(c) for c in ("tab:blue", "tab:blue", "tab:purple", "tab:purple", "tab:brown", "tab:brown")]


def test_psnr_axis_spans_half_a_db_and_says_when_methods_tie(figures, tmp_path):
    records = [r for r in _run(tied=True) if r["w_bits"] != 2]  # one bit-width: no PSNR-vs-bits figure
    notes: list[str] = []
    plots.plot_run(records, tmp_path, notes)
    assert notes == ["swinir-light x2: no PSNR-vs-bits figure: the run has 1 bit-width(s)"]
    ax = figures["swinir-light_x2_psnr_vs_size"].axes[0]
    low, high = ax.get_ylim()
    assert high - low == pytest.approx(plots.MIN_PSNR_SPAN_DB)  # FP and the methods span 0.012 dB: not 0.012 tall
    texts = [t.get_text() for t in ax.texts]
    assert texts == ["quantized methods within 0.005 dB:\ndifferences below 0.01 dB, not a ranking"]
    assert ax.yaxis.get_major_formatter().get_useOffset() is False
    assert ax.get_title() == "Set5 (crop 64)"  # the tables' column header


def test_a_tiny_spread_gets_at_least_half_a_db(figures, tmp_path):
    records = [r for r in _run(tied=True) if r["method"] not in ("fp", "bicubic")]
    plots.plot_run(records, tmp_path)
    low, high = figures["swinir-light_x2_psnr_vs_bits"].axes[0].get_ylim()
    assert high - low == pytest.approx(2.005 * 1.16)  # 2 to 4 bits span 2.005 dB: wider than the minimum, 8 % margins
    records = [r for r in records if r["w_bits"] == 4]
    figures.clear()
    notes: list[str] = []
    plots.plot_run(records, tmp_path, notes)
    assert notes[:2] == ["swinir-light x2: no PSNR-vs-bits figure: the run has 1 bit-width(s)",
                         "swinir-light x2: no PSNR-vs-size figure: the run has 1 model size(s)"]


def test_latency_bars_show_median_quartiles_and_n(figures, tmp_path):
    plots.plot_run(_run(), tmp_path)
    ax = figures["swinir-light_x2_latency"].axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "MinMax\nW4A4, N=5, 1.33x FP"  # 12 / 9 ms; FP's own cell is a note, not a bar
    assert "median of N=5 runs after 1 warm-up; whiskers: interquartile range" in ax.get_title()
    whiskers = sorted({tuple(sorted(seg[:, 0])) for coll in ax.collections for seg in coll.get_segments()})
    assert (11.0, 13.0) in whiskers and (8.0, 9.0) in whiskers
    assert [t.get_text().replace("\n", " ") for t in ax.texts] == [
        "FP's own cell, timed alone at another moment: median 9.0 ms (IQR 8.0-9.0, N=5). Not drawn: on a "
        "shared CPU only the FP timed in turns beside a variant is that variant's baseline."]


def test_spread_is_the_interquartile_range():
    assert spread_ms(TIMES) == (11.0, 13.0)
    assert spread_ms([7.0]) == (7.0, 7.0)


class _Logged(nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def test_variants_are_warmed_up_then_timed_in_rotating_turns():
    log: list[str] = []
    timings = interleaved_timings([_Logged("fp", log), _Logged("q", log)], 8, 3, torch.device("cpu"), warmup=1)
    assert log == ["fp", "q", "fp", "q", "q", "fp", "fp", "q"]
    assert [(t.runs, t.warmup) for t in timings] == [(3, 1), (3, 1)]
    assert interleaved_timings([_Logged("fp", log)], 8, 0, torch.device("cpu")) is None
    assert Timing((3.0, 1.0, 2.0), 1).median_ms == 2.0


def test_display_names_name_matrix_variants_by_their_parameter():
    records = [{"label": "2dquant-tiny", "method": "2dquant", "method_params": {"iters": 10}},
               {"label": "ptq4sr-tiny", "method": "ptq4sr", "method_params": {"iters": 10, "batch": 2}},
               {"label": "minmax", "method": "minmax"}, {"label": "mine", "method": "absmax-symmetric"},
               {"label": "a", "method": "dobi", "method_params": {"variant": "code"}},
               {"label": "b", "method": "dobi", "method_params": {"variant": "code", "K": 50}}]
    assert display_names(records) == {"2dquant-tiny": "2DQuant (10 DQC steps)", "ptq4sr-tiny": "DBDC+Pac (Pac 10 iterations)",
                                      "minmax": "MinMax", "mine": "mine", "a": "a", "b": "b"}  # a, b would collide
