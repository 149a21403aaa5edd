"""The size/accuracy trade-off view (bench.runner.pareto): the frontier, the figure's layout and encoding, the
HTML report's trade-off charts, and `bench table`'s mixed rows beside the uniform ones of their budget.

Records: a real smoke run (tests/data/figures/smoke_records.jsonl: IMDN x2, Set5 crops, FP, bicubic, MinMax
and DOBI at W4A4) with hand-made W3A3 and mixed-precision records added (their values chosen so that the
frontier is known), and the committed reference run results/reference/runs/mixed-precision (IMDN x4 and x2,
DOBI and EMMSE, uniform and mixed, measured).
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pytest
from test_figures_layout import draw, layout_problems, load

from bench.report.html import RunRecords, build_report
from bench.runner import pareto, plots
from bench.runner.rundir import RunDir
from bench.runner.style import Styles
from bench.runner.tables import build_tables, render

REFERENCE_RUN = Path(__file__).resolve().parents[1] / "results" / "reference" / "runs" / "mixed-precision"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _variant(record: dict, psnr: float, size: int, w: int, tag: str | None = None) -> dict:
    r = copy.deepcopy(record)
    r.update(psnr=psnr, model_size_bytes=size, packed_size_bytes=size + 27_000, w_bits=w, a_bits=w)
    r["key"] = r["key"].replace("W4A4", tag or f"W{w}A{w}")
    if tag is not None:
        r["method_description"] = {**(r.get("method_description") or {}), "mixed": {"tag": tag, "layer_bits": {}}}
    return r


@pytest.fixture
def records() -> list[dict]:
    """Smoke's records plus: DOBI W3A3 and mixed4 (smaller than W4A4 and better: W4A4 leaves DOBI's frontier),
    MinMax mixed4 (smaller than its W4A4, worse: both stay on its frontier)."""
    smoke = [r for r in load("smoke") if r["status"] == "ok"]
    dobi = next(r for r in smoke if r["label"] == "dobi")
    minmax = next(r for r in smoke if r["label"] == "minmax")
    size = dobi["model_size_bytes"]
    return smoke + [_variant(minmax, minmax["psnr"] - 0.4, size - 9_500, 4, "mixed4"),
                    _variant(dobi, dobi["psnr"] - 2.0, size - 80_000, 3),
                    _variant(dobi, dobi["psnr"] + 0.8, size - 9_000, 4, "mixed4")]


def test_pareto_front_keeps_the_points_nothing_dominates():
    def point(size, psnr):
        return pareto.TradeOffPoint("m", size, psnr, False, "W4A4", {})
    a, b, c, d, e = point(100, 30.0), point(100, 31.0), point(90, 29.0), point(120, 30.5), point(130, 32.0)
    assert pareto.pareto_front([a, b, c, d, e]) == [c, b, e]      # a: same size as b, worse; d: larger than b, worse
    assert pareto.pareto_front([d, d]) == [d]                      # an equal point adds nothing
    assert pareto.pareto_front([]) == []


def test_trade_off_points_frontier_and_gains(records):
    smoke_dobi = next(r for r in records if r["label"] == "dobi" and not pareto.is_mixed(r))
    points = pareto.trade_off_points(records)
    assert [(p.bits, p.mixed) for p in points["dobi"]] == [("W3A3", False), ("mixed4", True), ("W4A4", False)]
    assert [p.bits for p in pareto.pareto_front(points["dobi"])] == ["W3A3", "mixed4"]
    assert [p.bits for p in pareto.pareto_front(points["minmax"])] == ["mixed4", "W4A4"]
    gains = {(label, tag): round(gain, 6) for label, _, tag, gain in pareto.mixed_gains(records)}
    assert gains == {("dobi", "mixed4"): 0.8, ("minmax", "mixed4"): -0.4}
    assert pareto.size_kinds(records) == list(pareto.SIZE_KINDS)
    assert smoke_dobi in pareto.uniform_only(records) and len(pareto.uniform_only(records)) == len(records) - 2


def test_the_figure_draws_uniform_filled_mixed_hollow_and_each_frontier(records, tmp_path, monkeypatch):
    figures = draw(plots, records, tmp_path, monkeypatch)
    assert "imdn_x2_pareto" in figures
    assert layout_problems(figures) == []
    fig = figures["imdn_x2_pareto"]
    assert len(fig.axes) == 2                                       # cost model row, measured packed row
    styles = Styles(records)
    cost_ax = fig.axes[0]
    dobi_colour = styles.of("dobi").colour
    lines = [ln for ln in cost_ax.get_lines() if mcolors.to_hex(ln.get_color()) == dobi_colour]
    frontier = [ln for ln in lines if ln.get_linestyle() == "-"]
    size = next(r for r in records if r["label"] == "dobi")["model_size_bytes"]
    assert [list(ln.get_xdata()) for ln in frontier] == [[(size - 80_000) / 1e3, (size - 9_000) / 1e3]]
    filled = [ln for ln in lines if ln.get_linestyle() == "None" and ln.get_markerfacecolor() != "white"]
    hollow = [ln for ln in lines if ln.get_linestyle() == "None" and ln.get_markerfacecolor() == "white"]
    assert sorted(filled[0].get_xdata()) == [(size - 80_000) / 1e3, size / 1e3]
    assert list(hollow[0].get_xdata()) == [(size - 9_000) / 1e3]
    assert {ln.get_marker() for ln in lines} == {styles.of("dobi").marker, "None"}
    assert fig.axes[1].get_xlabel() == "model size (KB, measured, packed)"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["FP", "MinMax", "DOBI", "filled: uniform bits", "hollow: mixed precision",
                      "line: the method's Pareto frontier"]
    # The bits and size figures draw the uniform records only: a mixed record's w_bits is its budget's.
    bits_ax = figures["imdn_x2_psnr_vs_bits"].axes[0]
    dobi_bits = next(ln for ln in bits_ax.get_lines() if mcolors.to_hex(ln.get_color()) == dobi_colour)
    assert list(dobi_bits.get_xdata()) == [3, 4]


def test_no_trade_off_figure_without_mixed_records(tmp_path, monkeypatch):
    figures = draw(plots, [r for r in load("smoke") if r["status"] == "ok"], tmp_path, monkeypatch)
    assert not any(stem.endswith("_pareto") for stem in figures)


def test_the_html_report_has_the_same_trade_off_charts(records, tmp_path):
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    titles = re.findall(r'<svg class="chart"[^>]*aria-label="([^"]*)">', html)
    assert titles[-2:] == ["Set5[crop64]: trade-off, cost-model size", "Set5[crop64]: trade-off, packed file"]
    chart = re.search(r'aria-label="Set5\[crop64\]: trade-off, cost-model size">(.*?)</svg>', html, re.S)[1]
    hollow = re.findall(r'class="pt" fill="white"[^>]*data-name="DOBI \(mixed\)" data-x="([^"]+)"', chart)
    size = next(r for r in records if r["label"] == "dobi")["model_size_bytes"]
    assert [float(x) for x in hollow] == [(size - 9_000) / 1e3]
    frontier = re.findall(r'data-name="DOBI frontier" data-x="([^"]+)"', chart)
    assert [float(x) for x in frontier] == [(size - 80_000) / 1e3, (size - 9_000) / 1e3]
    assert "mixed4" in html and 'data-name="line: Pareto frontier"' in html


def test_table_shows_each_mixed_row_right_after_the_uniform_rows_of_its_budget(records):
    table = render(build_tables(records), "md").split("####")[0]  # the main table, not the deployment one
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| ") and "Method" not in line]
    order = [(name.strip(), bits.strip()) for name, bits in rows]
    assert order == [("FP", "32"), ("Bicubic", "-"), ("MinMax", "4"), ("DOBI", "4"), ("MinMax", "mixed4"),
                     ("DOBI", "mixed4"), ("DOBI", "3")]


@pytest.mark.skipif(not (REFERENCE_RUN / "records.jsonl").is_file(), reason="the committed mixed-imdn run")
def test_committed_reference_run_figure_layout(tmp_path, monkeypatch):
    """The figure of the README (IMDN x2) and the x4 one, on the committed measured records."""
    records = [json.loads(line) for line in (REFERENCE_RUN / "records.jsonl").read_text().splitlines()]
    records = [r for r in records if r.get("status") == "ok"]
    figures = draw(plots, records, tmp_path, monkeypatch)
    assert {"imdn_x2_pareto", "imdn_x4_pareto"} <= set(figures)
    assert layout_problems(figures) == []
    for r in (r for r in records if pareto.is_mixed(r)):   # within the budget: never larger than its uniform cell
        assert r["model_size_bytes"] <= next(u["model_size_bytes"] for u in records if u["label"] == r["label"]
                                             and (u["model"], u["scale"]) == (r["model"], r["scale"])
                                             and not pareto.is_mixed(u) and u["w_bits"] == r["w_bits"])
    # Issue 25's acceptance on IMDN (output MSE, one refinement round): >= 0.5 dB over uniform W4A4 on Set5, and
    # above uniform W3A3, for DOBI and EMMSE at x2 and x4.
    gains = {}
    for scale in (2, 4):
        mine = [r for r in records if r["model"] == "imdn" and r["scale"] == scale]
        gains.update({(scale, label, tag): gain for label, dataset, tag, gain in pareto.mixed_gains(mine)
                      if dataset == "Set5" and "-r1-" in tag})
    assert sorted(gains) == [(s, m, f"mixed{b}-r1-s16x48") for s in (2, 4) for m in ("dobi", "emmse") for b in (3, 4)]
    assert all(gain >= 0.5 for (_, _, tag), gain in gains.items() if tag.startswith("mixed4"))
    assert all(gain > 0 for gain in gains.values())
