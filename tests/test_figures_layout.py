"""Figures as a reader sees them, on the records of a real demo run (tests/data/figures/demo_records.jsonl:
FSRCNN and SwinIR-light x2, FP, bicubic and six methods at W4A4 on the sample photos) and a real smoke run
(smoke_records.jsonl: IMDN x2 on Set5, FP, bicubic, MinMax, DOBI):

* no legend, note or tick label lies over an axes' data area (matplotlib's renderer measures them);
* tick labels do not overlap each other (the latency plot's method names);
* each method has one colour and one marker in the PNG/PDF figures and in the HTML report's SVG charts;
* no chart has a single x value (one bit-width: no PSNR-vs-bits chart), and every PSNR axis spans at least
  MIN_PSNR_SPAN_DB, with the "not a ranking" note where the methods tie (the demo's SwinIR-light: 0.002 dB);
* the tables' method names ("2DQuant (50 DQC steps)") in every output, crop strips with the crop's own PSNR.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bench.report.html import RunRecords, build_report
from bench.runner import plots
from bench.runner.rundir import RunDir
from bench.runner.style import MIN_PSNR_SPAN_DB, Styles
from bench.runner.tables import display_names

DATA = Path(__file__).with_name("data") / "figures"


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{name}_records.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(params=["demo", "smoke"])
def records(request) -> list[dict]:
    return load(request.param)


def draw(plot_module, records: list[dict], tmp_path: Path, monkeypatch) -> dict:
    """The figures `plot_module.plot_run` draws, by stem, drawn (not saved) so that extents are final."""
    drawn = {}

    def keep(fig, out_dir, stem):
        drawn[stem] = fig
        return [out_dir / f"{stem}.png"]

    monkeypatch.setattr(plot_module, "_save", keep)
    plot_module.plot_run(records, tmp_path)
    for fig in drawn.values():
        fig.canvas.draw()
    return drawn


def _legends(fig) -> list:
    return list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]


def layout_problems(figures: dict) -> list[str]:
    """Every overlap a reader would see: a legend or a note over an axes' data area or its y tick labels, two
    tick labels of one axis over each other. Empty when the layout is clean."""
    problems = []
    for stem, fig in figures.items():
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            area = ax.get_window_extent(renderer)
            ticks = [t for t in ax.get_yticklabels() + ax.get_xticklabels() if t.get_visible() and t.get_text()]
            for legend in _legends(fig):
                box = legend.get_window_extent(renderer)
                if box.overlaps(area):
                    problems.append(f"{stem}: legend over the data area of {ax.get_title()!r}")
                if any(box.overlaps(t.get_window_extent(renderer)) for t in ticks):
                    problems.append(f"{stem}: legend over a tick label of {ax.get_title()!r}")
            for text in ax.texts:
                if getattr(text, "xycoords", None) == "data":
                    continue  # a value written on its bar (bar_label) belongs in the data area
                if text.get_window_extent(renderer).overlaps(area):
                    problems.append(f"{stem}: note {text.get_text()[:30]!r} over the data area")
            for axis in (ax.get_xticklabels(), ax.get_yticklabels()):
                boxes = [t.get_window_extent(renderer) for t in axis if t.get_visible() and t.get_text()]
                problems += [f"{stem}: tick labels {i} and {j} overlap" for i in range(len(boxes))
                             for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    return problems


def test_no_legend_note_or_label_covers_the_data(records, tmp_path, monkeypatch):
    figures = draw(plots, [r for r in records if r["status"] == "ok"], tmp_path, monkeypatch)
    assert any(stem.endswith("_psnr_vs_size") for stem in figures) and any(s.endswith("_latency") for s in figures)
    assert all(_legends(fig) for fig in figures.values())   # the legends exist: they are outside, not gone
    assert layout_problems(figures) == []


def test_onnxruntime_latency_figure_layout(tmp_path, monkeypatch):
    """The measured onnxruntime figure of a run that holds it: bar values on the bars, nothing else over them."""
    records = [r for r in load("demo") if r["model"] == "fsrcnn"]
    for r in records:
        if r["method"] not in ("fp", "bicubic"):
            r.update(latency_ort_fp32_ms=3.1, latency_ort_int8_ms=2.2, latency_ort_speedup=3.1 / 2.2,
                     latency_ort_threads=1, latency_ort_provider="cpu", latency_ort_runs=20, latency_ort_lr_size=64)
    figures = draw(plots, records, tmp_path, monkeypatch)
    ax_ms = figures["fsrcnn_x2_latency_onnxruntime"].axes[0]
    assert [t.get_text() for t in ax_ms.get_xticklabels()][3] == "DBDC+Pac (Pac 10\niterations)\nW4A4"
    assert layout_problems(figures) == []


def test_old_layout_fails_the_check(tmp_path, monkeypatch):
    """The check can fail: a legend drawn inside the axes, as `bench plot` drew the demo's 13 entries."""
    figures = draw(plots, load("demo"), tmp_path, monkeypatch)
    fig = figures["fsrcnn_x2_psnr_vs_size"]
    fig.legends.clear()
    fig.axes[0].legend(fontsize="small")
    fig.canvas.draw()
    assert "fsrcnn_x2_psnr_vs_size: legend over the data area of 'sample'" in layout_problems(figures)


# ------------------------------------------------------------------------------------------ one style map

def _hex(colour) -> str:
    return mcolors.to_hex(colour)


def _svg_points(html: str) -> dict[str, set]:
    """Method name -> {(fill or stroke colour, marker)} of the filled points in the page's SVG charts."""
    found: dict[str, set] = {}
    for tag in re.findall(r'<(?:circle|polygon) [^>]*class="pt"[^>]*>', html):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        if attrs["fill"] != "white":
            found.setdefault(attrs["data-name"], set()).add((attrs["stroke"], attrs["data-marker"]))
    return found


def test_png_and_html_share_one_colour_and_marker_per_method(tmp_path, monkeypatch):
    records = load("demo")
    styles = Styles(records)
    names = display_names(records)
    figures = draw(plots, records, tmp_path, monkeypatch)
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    svg_points = _svg_points(html)
    for model in ("fsrcnn", "swinir-light"):
        lines = figures[f"{model}_x2_psnr_vs_size"].axes[0].get_lines()
        png = {line.get_label(): (_hex(line.get_color()), line.get_marker()) for line in lines}
        for label in ("fp", "minmax", "percentile", "emmse", "ptq4sr-tiny", "dobi", "2dquant-tiny"):
            expected = (styles.of(label).colour, styles.of(label).marker)
            assert png[f"{names[label]} (cost model)"] == expected, label
            assert svg_points[names[label]] == {expected}, label
    # The built-in colours, FP a black star; 2DQuant brown as in every run, whatever its label.
    assert (styles.of("fp").colour, styles.of("fp").marker) == ("#000000", "*")
    assert styles.of("2dquant-tiny").colour == "#8c564b" and styles.of("minmax").colour == "#1f77b4"
    assert len({(styles.of(label).colour, styles.of(label).marker) for label in names}) == len(names)
    # The latency bars: each variant in its method's colour.
    ax = figures["fsrcnn_x2_latency"].axes[0]
    coloured = [_hex(p.get_facecolor()) for p in ax.patches if _hex(p.get_facecolor()) != _hex("lightgrey")]
    assert coloured == [styles.of(label).colour for label in
                        ("minmax", "percentile", "emmse", "ptq4sr-tiny", "dobi", "2dquant-tiny")]


# ------------------------------------------------------------------------------------------ honest ranges

def _svg_charts(html: str) -> list[tuple[str, str]]:
    """(title, SVG) of every chart of the page."""
    return re.findall(r'<svg class="chart"[^>]*aria-label="([^"]*)">(.*?)</svg>', html, re.S)


def test_no_one_point_charts_and_honest_ranges_in_html_and_png(tmp_path, monkeypatch):
    records = load("demo")
    figures = draw(plots, records, tmp_path, monkeypatch)
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    charts = _svg_charts(html)
    # One bit-width (W4A4): no PSNR-vs-bits chart in either format; the page says why, as `bench plot` does.
    assert sorted(figures) == ["fsrcnn_x2_latency", "fsrcnn_x2_psnr_vs_size", "swinir-light_x2_latency",
                               "swinir-light_x2_psnr_vs_size"]
    assert [title for title, _ in charts] == ["sample: PSNR vs model size"] * 2
    assert "swinir-light x2: no PSNR-vs-bits figure: the run has 1 bit-width(s); a chart needs two or more." in html
    for _, chart in charts:
        assert len(set(re.findall(r'class="pt"[^>]*data-x="([^"]+)"', chart))) >= 2       # FP's size and W4A4's
        ticks = [float(t) for t in re.findall(r'text-anchor="end">([\d.]+)</text>', chart)]  # the PSNR axis
        assert max(ticks) - min(ticks) >= MIN_PSNR_SPAN_DB
    # SwinIR-light's six methods are within 0.002 dB: both formats say it is not a ranking.
    swinir = [r["psnr"] for r in records if r["model"] == "swinir-light" and r["method"] not in ("fp", "bicubic")]
    spread = max(swinir) - min(swinir)
    assert spread < 0.01
    note = f"quantized methods within {spread:.3f} dB: differences below 0.01 dB, not a ranking"
    assert html.count(f'data-note="{note}"') == 1                   # in SwinIR-light's chart only
    ax = figures["swinir-light_x2_psnr_vs_size"].axes[0]
    assert [t.get_text().replace("\n", " ") for t in ax.texts] == [note]
    low, high = ax.get_ylim()
    assert high - low == pytest.approx(MIN_PSNR_SPAN_DB)
    for stem, fig in figures.items():
        if "psnr" in stem:
            for line_ax in fig.axes:
                xs = {x for line in line_ax.get_lines() for x in np.atleast_1d(line.get_xdata())}
                assert len(xs) >= 2, stem


# ------------------------------------------------------------------------------------------ names, latency

def test_display_names_in_figures_and_latency_explains_fp(tmp_path, monkeypatch):
    records = load("demo")
    figures = draw(plots, records, tmp_path, monkeypatch)
    legend = [t.get_text() for t in figures["fsrcnn_x2_psnr_vs_size"].legends[0].get_texts()]
    assert legend == ["FP", "MinMax", "Percentile", "EMMSE", "DBDC+Pac (Pac 10 iterations)", "DOBI",
                      "2DQuant (50 DQC steps)", "filled: cost model size", "hollow: measured packed file"]
    ax = figures["fsrcnn_x2_latency"].axes[0]
    labels = [t.get_text().split("\n")[0] for t in ax.get_yticklabels()]
    assert labels == legend[1:7]                     # no "FP (alone)" bar: one row per variant
    fp = next(r for r in records if r["model"] == "fsrcnn" and r["method"] == "fp")
    (note,) = [t.get_text().replace("\n", " ") for t in ax.texts]
    assert note.startswith(f"FP's own cell, timed alone at another moment: median {fp['latency_ms']:.1f} ms")
    # Every bar inside the axes: the longest whisker end fits the x-range.
    right = max(max(seg[:, 0]) for coll in ax.collections for seg in coll.get_segments())
    assert right <= ax.get_xlim()[1]
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    assert ">2DQuant (50 DQC steps)</text>" in html and "2dquant-tiny<" not in html


def test_crop_strip_names_methods_and_gives_the_crops_psnr(tmp_path):
    """A run with saved SR images: the strip's titles are the tables' names, and each panel's crop PSNR is the
    Y-channel PSNR of the pixels shown (reference formula here), beside the record's whole-image PSNR."""
    from PIL import Image

    from bench.data.dataset import load_dataset
    from bench.runner.visual import Crop, build_panels

    hr = next(p.hr for p in load_dataset("sample", 2, data_root=tmp_path) if p.name == "astronaut")
    records = [r for r in load("demo") if r["model"] == "fsrcnn" and r["method"] in ("fp", "2dquant")]
    run = tmp_path / "run"
    for r, offset in zip(records, (0, 12)):
        r["key"] = r["key"] + "/t"
        r["images_dir"] = f"images/{r['label']}"
        (run / r["images_dir"]).mkdir(parents=True)
        sr = hr.astype(np.int16)
        sr[60:90, 40:100] += offset                  # inside the crop only: the whole image barely changes
        Image.fromarray(np.clip(sr, 0, 255).astype(np.uint8)).save(run / r["images_dir"] / "astronaut.png")
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    strip = build_panels(RunDir(run), "astronaut", Crop(40, 60, 60, 30), data_root=tmp_path)
    assert [p.title for p in strip.panels] == ["HR", "FP", "2DQuant (50 DQC steps) W4A4"]
    assert math.isinf(strip.panels[1].crop_psnr)     # FP's saved image equals HR here
    crop = (slice(60, 90), slice(40, 100))
    ours = np.clip(hr.astype(np.int16)[crop] + 12, 0, 255).astype(np.float64)
    dy = ((ours - hr[crop].astype(np.float64)) @ np.array([65.481, 128.553, 24.966])) / 255.0
    assert strip.panels[2].crop_psnr == pytest.approx(20 * math.log10(255 / math.sqrt(np.mean(dy ** 2))), abs=1e-9)
    image_psnr = next(p["psnr"] for p in records[1]["per_image"] if p["name"] == "astronaut")
    assert strip.panels[2].psnr_text == f"crop {strip.panels[2].crop_psnr:.2f} dB, image {image_psnr:.2f} dB"


def test_html_legends_and_notes_sit_below_the_plot_area(tmp_path):
    records = load("demo")
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    for title, chart in _svg_charts(html):
        y, height = (float(v) for v in re.search(r'class="plot-area" x="[\d.]+" y="([\d.]+)" width="[\d.]+" '
                                                 r'height="([\d.]+)"', chart).groups())
        bottom = y + height
        legend = [float(v) for v in re.findall(r'<text class="legend" x="[\d.]+" y="([\d.]+)"', chart)]
        notes = [float(v) for v in re.findall(r'<tspan x="[\d.]+" y="([\d.]+)"', chart)]
        assert len(legend) == 9                              # FP, six methods, filled and hollow
        assert min(legend + notes) - 10 > bottom + 30, title  # under the x label (30 px below the axis), 10 px text
        points = [float(v) for v in re.findall(r'class="pt"[^>]*data-y="([^"]+)"', chart)]
        assert len(points) == 13                             # FP, six methods by cost model and by packed file
