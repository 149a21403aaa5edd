"""Figures of a run, each saved as PNG and PDF (matplotlib's Agg backend: no display needed).

Per (model, scale):
  * `<model>_x<s>_psnr_vs_bits`: one panel per dataset, PSNR against W bits, one line per method, FP and
    bicubic as horizontal references; drawn only when the run has two or more bit-widths;
  * `<model>_x<s>_psnr_vs_size`: PSNR against model size (MB), one marker per method: the cost model's size
    (bench.cost, filled) and, where the records hold it, the measured packed file (`bench export --format
    packed`, hollow, dotted); drawn only when the run has two or more cost-model sizes (FP and a quantized one);
  * `<model>_x<s>_pareto`: where the run has mixed-precision records, PSNR against size with uniform (filled)
    and mixed (hollow) points and each method's Pareto frontier (bench.runner.pareto); the two figures above
    draw the uniform records only;
  * `<model>_x<s>_latency`: horizontal bars, one row per quantized variant: its median forward latency beside
    FP's, the two timed in turns (labelled fake-quant: simulated quantization, not integer kernels), with the
    interquartile range and N. FP's own cell, timed alone at another moment, is not a bar: its median is a
    note under the axes, because under a changing CPU load it is no baseline for the variants;
  * `<model>_x<s>_latency_onnxruntime`: where the records hold it (`latency: {runtime: onnxruntime}`), the
    measured onnxruntime FP32 and int8 QDQ medians of each variant, and its measured speed-up beside the
    speed-up the paper's rule predicts.

What keeps them honest (bench.runner.style, shared with the HTML report):
  * one colour and marker per method label in every figure and format (FP a black star, bicubic grey);
  * the PSNR axis spans at least MIN_PSNR_SPAN_DB, without offset notation, so that differences of a few
    thousandths of a dB do not look like a ranking; when the quantized methods of a panel are within
    TIE_DB of each other the panel says so under its axis;
  * legends sit outside the axes: they never hide a point or a tick label;
  * a figure with nothing to compare (one bit-width, one size) is not drawn, and `plot_run` says why in its notes.
Dataset titles are the tables' column headers (bench.runner.tables), method names the tables' row names.
"""
from __future__ import annotations

import statistics
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from bench.runner import pareto
from bench.runner.latency import spread_ms
from bench.runner.style import MIN_PSNR_SPAN_DB, TIE_DB, Styles, is_quantized, psnr_limits, skipped_charts, tie_note
from bench.runner.tables import DATASET_ORDER, _dataset_header

__all__ = ["FORMATS", "MIN_PSNR_SPAN_DB", "TIE_DB", "Styles", "plot_run", "size_series", "ort_variants"]

FORMATS = ("png", "pdf")
NOTE_WIDTH = 90   # characters per line of a note under the axes


# ------------------------------------------------------------------------------------------ helpers

def _figure(width: float, height: float):
    """A figure whose layout engine keeps titles, notes and the outside legend clear of each other."""
    return plt.figure(figsize=(width, height), layout="constrained")


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _ds(record: dict) -> str:
    return record.get("dataset_label") or record["dataset"]


def _datasets(records: list[dict]) -> list[str]:
    labels = {_ds(r) for r in records}
    name = {_ds(r): r["dataset"] for r in records}
    return sorted(labels, key=lambda d: (DATASET_ORDER.index(name[d]) if name[d] in DATASET_ORDER else 99, d))


def _title(dataset: str, records: list[dict]) -> str:
    mine = [r for r in records if _ds(r) == dataset]
    return _dataset_header(mine[0]["dataset"], mine)


def _is_quantized(record: dict) -> bool:
    return is_quantized(record)


def _note_under(ax, text: str) -> None:
    """A note under the axes' x label: outside the data area, so it hides no point."""
    text = "\n".join(textwrap.fill(line, NOTE_WIDTH) for line in text.split("\n"))
    ax.annotate(text, xy=(0.5, 0.0), xycoords=ax.xaxis.label, xytext=(0, -3), textcoords="offset points",
                ha="center", va="top", fontsize="x-small", color="dimgrey")


def _honest_psnr_axis(ax, values: list[float], quantized: list[float]) -> None:
    """A y-range of at least MIN_PSNR_SPAN_DB around the values, in plain dB; a note when methods tie."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    limits = psnr_limits(values)
    if limits is not None:
        ax.set_ylim(*limits)
    note = tie_note(quantized)
    if note is not None:
        _note_under(ax, note.replace(": ", ":\n", 1))


def _legend_outside(fig, handles: list) -> None:
    """One legend for all panels, right of them (constrained layout makes room for it)."""
    unique = {h.get_label(): h for h in handles if not h.get_label().startswith("_")}
    if unique:
        fig.legend(list(unique.values()), list(unique), loc="outside right center", fontsize="small")


def _references(ax, mine: list[dict], styles: Styles) -> list[float]:
    """FP and bicubic as horizontal lines; returns their PSNRs."""
    values = []
    for method, line in (("fp", "--"), ("bicubic", ":")):
        ref = next((r for r in mine if r["method"] == method and r.get("psnr") is not None), None)
        if ref is not None:
            ax.axhline(ref["psnr"], linestyle=line, color=styles.of(ref["label"]).colour, linewidth=1,
                       label=styles.name(ref))
            values.append(ref["psnr"])
    return values


# ------------------------------------------------------------------------------------------ figures

def _panels(datasets: list[str]):
    """A figure with one panel per dataset, and its axes."""
    fig = _figure(3.6 * len(datasets) + 2.4, 3.6)
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    return fig, list(axes)


def plot_psnr_vs_bits(records: list[dict], model: str, scale: int, out_dir: Path,
                      styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    datasets = _datasets(records)
    fig, axes = _panels(datasets)
    handles = []
    for ax, dataset in zip(axes, datasets):
        mine = [r for r in records if _ds(r) == dataset and r.get("psnr") is not None]
        quantized = [r for r in mine if _is_quantized(r)]
        for label in dict.fromkeys(r["label"] for r in quantized):
            points = sorted((r["w_bits"], r["psnr"]) for r in quantized if r["label"] == label)
            ax.plot(*zip(*points), label=styles.name(next(r for r in quantized if r["label"] == label)),
                    **styles.mpl(label))
        refs = _references(ax, mine, styles)
        _honest_psnr_axis(ax, refs + [r["psnr"] for r in quantized], [r["psnr"] for r in quantized])
        ax.set_title(_title(dataset, records))
        ax.set_xlabel("weight/activation bits")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.set_xticks(sorted({r["w_bits"] for r in quantized}))
        ax.grid(alpha=0.3)
        handles += ax.get_lines()
    _legend_outside(fig, handles)
    fig.suptitle(f"{model} x{scale}: PSNR vs bits")
    return _save(fig, out_dir, f"{model}_x{scale}_psnr_vs_bits")


SIZE_KINDS = (("model_size_bytes", "cost model"), ("packed_size_bytes", "measured, packed"))


def size_series(records: list[dict], styles: Styles) -> list[tuple[str, str, str, list[tuple[float, float]]]]:
    """(legend name, label, size kind, sorted (MB, PSNR) points) of the quantized methods of one dataset panel:
    the cost model's sizes, then the measured packed sizes of the records that hold one."""
    quantized = [r for r in records if _is_quantized(r) and r.get("psnr") is not None]
    series = []
    for field, kind in SIZE_KINDS:
        for label in dict.fromkeys(r["label"] for r in quantized):
            members = [r for r in quantized if r["label"] == label and r.get(field)]
            if members:
                points = sorted((r[field] / 1e6, r["psnr"]) for r in members)
                series.append((f"{styles.name(members[0])} ({kind})", label, kind, points))
    return series


def _size_legend(records: list[dict], styles: Styles, measured: bool) -> list:
    """One entry per method (its colour and marker), then what filled and hollow mean: half the entries of
    one per (method, size kind)."""
    shown = [r for r in records if r.get("model_size_bytes") and r.get("psnr") is not None]
    first_of = {r["label"]: r for r in reversed(shown)}  # FP first, then the methods in the run's order
    labels = sorted(dict.fromkeys(r["label"] for r in shown), key=lambda label: _is_quantized(first_of[label]))
    handles = [Line2D([], [], linestyle="", markersize=8, label=styles.name(first_of[label]), **styles.mpl(label))
               for label in labels]
    if measured:  # without a measured file every marker is the cost model's: no key needed
        handles.append(Line2D([], [], linestyle="", marker="o", color="dimgrey", label="filled: cost model size"))
        handles.append(Line2D([], [], linestyle=":", marker="o", color="dimgrey", markerfacecolor="none",
                              label="hollow: measured packed file"))
    return handles


def plot_psnr_vs_size(records: list[dict], model: str, scale: int, out_dir: Path,
                      styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    datasets = _datasets(records)
    fig, axes = _panels(datasets)
    measured = False
    for ax, dataset in zip(axes, datasets):
        mine = [r for r in records if _ds(r) == dataset and r.get("model_size_bytes") and r.get("psnr") is not None]
        quantized = [r for r in mine if _is_quantized(r)]
        for r in (r for r in mine if r["method"] == "fp"):
            ax.plot(r["model_size_bytes"] / 1e6, r["psnr"], markersize=11, linestyle="",
                    label=f"{styles.name(r)} (cost model)", **styles.mpl(r["label"]))
        for name, label, kind, points in size_series(mine, styles):
            hollow = kind != "cost model"
            measured |= hollow
            line = (":" if hollow else "-") if len(points) > 1 else ""
            ax.plot(*zip(*points), linestyle=line, markerfacecolor="none" if hollow else None, markersize=8,
                    label=name, **styles.mpl(label))
        _honest_psnr_axis(ax, [r["psnr"] for r in mine], [r["psnr"] for r in quantized])
        ax.set_title(_title(dataset, records))
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.grid(alpha=0.3)
    _legend_outside(fig, _size_legend(records, styles, measured))
    fig.suptitle(f"{model} x{scale}: PSNR vs model size")
    return _save(fig, out_dir, f"{model}_x{scale}_psnr_vs_size")


def _times(record: dict, field: str, median_field: str) -> list[float]:
    """Every timed run of a record (older records kept only the median)."""
    times = record.get(field)
    if times:
        return list(times)
    return [record[median_field]] if record.get(median_field) is not None else []


def _bar(ax, y: float, times: list[float], colour: str, height: float = 0.38, **kwargs) -> None:
    """A horizontal bar at the median, whiskers at the interquartile range."""
    median = statistics.median(times)
    q1, q3 = spread_ms(times)
    ax.barh(y, median, height=height, color=colour, xerr=[[median - q1], [q3 - median]], capsize=3,
            error_kw={"elinewidth": 1}, **kwargs)


def _spread_text(times: list[float]) -> str:
    q1, q3 = spread_ms(times)
    return f"median {statistics.median(times):.1f} ms (IQR {q1:.1f}-{q3:.1f}, N={len(times)})"


def plot_latency(records: list[dict], model: str, scale: int, out_dir: Path,
                 styles: Styles | None = None) -> list[Path]:
    """One row per quantized variant: FP and the variant timed in turns (the only fair pair on a shared CPU).
    FP's own cell, timed alone, is a bar only when no variant has an FP timed beside it (older records)."""
    styles = styles or Styles(records)
    fp = next((r for r in records if r["method"] == "fp" and _times(r, "latency_times_ms", "latency_ms")), None)
    variants: dict[tuple, dict] = {}
    for r in records:  # one calibration serves every dataset: its latency appears once
        if _is_quantized(r) and _times(r, "latency_times_ms", "latency_ms"):
            variants.setdefault((r["label"], r["w_bits"], r["a_bits"]), r)
    paired_any = any(_times(r, "latency_fp_times_ms", "latency_fp_ms") for r in variants.values())
    rows = len(variants) + (1 if fp is not None and not paired_any else 0)
    fig = _figure(7.5, 1.9 + 0.62 * max(rows, 1))
    ax = fig.subplots()
    ticks, labels, runs, notes = [], [], set(), []
    row = 0
    if fp is not None:
        times = _times(fp, "latency_times_ms", "latency_ms")
        if paired_any:
            notes.append(f"FP's own cell, timed alone at another moment: {_spread_text(times)}. Not drawn: on a "
                         f"shared CPU only the FP timed in turns beside a variant is that variant's baseline.")
        else:
            _bar(ax, row, times, styles.of(fp["label"]).colour, height=0.6)
            ticks.append(row)
            labels.append(f"FP (its own cell)\nN={len(times)}")
            runs.add(len(times))
            row += 1
    for (label, w, a), r in variants.items():
        quant = _times(r, "latency_times_ms", "latency_ms")
        paired = _times(r, "latency_fp_times_ms", "latency_fp_ms")
        if paired:
            _bar(ax, row - 0.2, paired, "lightgrey", hatch="//", edgecolor="dimgrey")
        _bar(ax, row + 0.2 if paired else row, quant, styles.of(label).colour, height=0.38 if paired else 0.6)
        ratio = f", {statistics.median(quant) / statistics.median(paired):.2f}x FP" if paired else ""
        ticks.append(row)
        labels.append(f"{styles.name(r)}\nW{w}A{a}, N={len(quant)}{ratio}")
        runs.add(len(quant))
        row += 1
    ax.set_yticks(ticks, labels, fontsize="small")
    ax.invert_yaxis()  # first row on top
    size = next((r.get("latency_lr_size") for r in records if r.get("latency_lr_size")), None)
    warmup = next((r.get("latency_warmup") for r in records if r.get("latency_warmup") is not None), None)
    n_text = f"N={runs.pop()}" if len(runs) == 1 else "N per bar"
    ax.set_xlabel("latency (ms)")
    ax.set_title(f"{model} x{scale}: forward latency, LR {size}x{size}, quantized = fake-quant\n"
                 f"median of {n_text} runs" + (f" after {warmup} warm-up" if warmup else "") +
                 "; whiskers: interquartile range", fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    if paired_any:
        first = next(iter(variants))[0]
        fig.legend(handles=[Patch(facecolor="lightgrey", hatch="//", edgecolor="dimgrey",
                                  label="FP, timed in turns with the variant of its row"),
                            Patch(facecolor=styles.of(first).colour,
                                  label="the quantized variant (fake-quant), in its method's colour")],
                   loc="outside lower center", ncol=2, fontsize="x-small", frameon=False)
    for note in notes:
        _note_under(ax, note)
    return _save(fig, out_dir, f"{model}_x{scale}_latency")


def _latency_figsize(variants: int) -> tuple[float, float]:
    """Two panels stacked (latency above, speed-up below): one column of bar groups per variant, readable at
    a page's width up to about a dozen variants."""
    return max(7.0, 1.4 * variants + 2.0), 7.6


def _colours(style: dict, count: int) -> list:
    colour = style.get("color")
    return list(colour) if isinstance(colour, list) else [colour] * count


@dataclass(frozen=True)
class OrtVariant:
    """One quantized variant's measured onnxruntime figures and the paper rule's speed-up (None if absent)."""
    label: str
    name: str
    bits: str
    fp32_ms: float
    int8_ms: float
    measured_speedup: float
    paper_speedup: float | None


def ort_variants(records: list[dict], styles: Styles) -> list[OrtVariant]:
    """The variants with an onnxruntime latency, once each (one calibration serves every dataset)."""
    found: dict[tuple, OrtVariant] = {}
    for r in sorted(records, key=lambda r: bool(r.get("peer"))):  # the runtimes' own PTQ after the methods
        key = (r["label"], r.get("w_bits"), r.get("a_bits"))
        if _is_quantized(r) and r.get("latency_ort_int8_ms") is not None and key not in found:
            found[key] = OrtVariant(r["label"], styles.name(r), f"W{r['w_bits']}A{r['a_bits']}",
                                    r["latency_ort_fp32_ms"], r["latency_ort_int8_ms"], r["latency_ort_speedup"],
                                    r.get("speedup"))
    return list(found.values())


def plot_ort_latency(records: list[dict], model: str, scale: int, out_dir: Path,
                     styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    variants = ort_variants(records, styles)
    timed = next(r for r in records if r.get("latency_ort_int8_ms") is not None)
    fig, (ax_ms, ax_x) = plt.subplots(2, 1, figsize=_latency_figsize(len(variants)))
    ticks = [f"{textwrap.fill(v.name, 18)}\n{v.bits}" for v in variants]  # long names wrap: labels never meet
    xs = list(range(len(variants)))
    bars = [ax_ms.bar([x - 0.2 for x in xs], [v.fp32_ms for v in variants], width=0.38, color="lightgrey",
                      hatch="//", edgecolor="dimgrey", label="FP32 export (measured)"),
            ax_ms.bar([x + 0.2 for x in xs], [v.int8_ms for v in variants], width=0.38,
                      color=[styles.of(v.label).colour for v in variants], label="int8 QDQ export (measured)")]
    for group in bars:
        ax_ms.bar_label(group, fmt="%.1f", fontsize="x-small")
    ax_ms.set_ylabel("latency (ms)")
    ax_ms.set_xticks(xs, ticks, fontsize="small")
    ax_ms.legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    paper = [(x, v.paper_speedup) for x, v in zip(xs, variants) if v.paper_speedup is not None]
    if paper:
        ax_x.bar_label(ax_x.bar([x - 0.2 for x, _ in paper], [p for _, p in paper], width=0.38, color="white",
                                edgecolor="dimgrey", hatch="..", label="paper rule (theoretical)"),
                       fmt="%.2fx", fontsize="x-small")
    ax_x.bar_label(ax_x.bar([x + 0.2 for x in xs], [v.measured_speedup for v in variants], width=0.38,
                            color=[styles.of(v.label).colour for v in variants], label="measured (onnxruntime)"),
                   fmt="%.2fx", fontsize="x-small")
    ax_x.axhline(1.0, color="black", linewidth=0.8)
    ax_x.set_ylabel("speed-up over FP32 (x)")
    ax_x.set_xticks(xs, ticks, fontsize="small")
    ax_x.legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    for ax in (ax_ms, ax_x):
        ax.grid(axis="y", alpha=0.3)
    size, runs, threads = (timed.get(f) for f in ("latency_ort_lr_size", "latency_ort_runs", "latency_ort_threads"))
    provider = timed.get("latency_ort_provider") or "cpu"
    fig.suptitle(f"{model} x{scale}: measured onnxruntime {provider} latency"
                 + (f", LR {size}x{size}" if size else "") + (f", median of {runs} interleaved runs" if runs else "")
                 + (f", {threads} thread(s)" if threads else ""), fontsize="medium")
    fig.tight_layout()
    return _save(fig, out_dir, f"{model}_x{scale}_latency_onnxruntime")


def plot_openvino_latency(records: list[dict], model: str, scale: int, out_dir: Path,
                          styles: Styles | None = None) -> list[Path]:
    """OpenVINO: FP32, BF16 and int8 latency of each variant, and int8's speed-up over both (beside the paper rule)."""
    styles = styles or Styles(records)
    found: dict[tuple, dict] = {}
    for r in sorted(records, key=lambda r: bool(r.get("peer"))):  # the runtimes' own PTQ after the methods
        key = (r["label"], r.get("w_bits"), r.get("a_bits"))
        if _is_quantized(r) and r.get("latency_ov_int8_ms") is not None and key not in found:
            found[key] = r
    variants = list(found.values())
    fig, (ax_ms, ax_x) = plt.subplots(2, 1, figsize=_latency_figsize(len(variants)))
    ticks = [f"{textwrap.fill(styles.name(r), 18)}\nW{r['w_bits']}A{r['a_bits']}" for r in variants]
    xs = list(range(len(variants)))
    executed = variants[0].get("latency_ov_bf16_executed") or "bf16"
    bf16_label = "BF16 hint (measured)" + ("" if executed == "bf16" else f", ran as {executed}")
    series = [("latency_ov_fp32_ms", -0.27, dict(color="lightgrey", hatch="//", edgecolor="dimgrey"), "FP32 (measured)"),
              ("latency_ov_bf16_ms", 0.0, dict(color="white", hatch="..", edgecolor="dimgrey"), bf16_label),
              ("latency_ov_int8_ms", 0.27, dict(color=[styles.of(r["label"]).colour for r in variants]),
               "int8 QDQ export (measured)")]
    for field, shift, style, label in series:
        ax_ms.bar_label(ax_ms.bar([x + shift for x in xs], [r[field] for r in variants], width=0.26, label=label,
                                  **style), fmt="%.0f", fontsize="x-small")
    ax_ms.set_ylabel("latency (ms)")
    ax_ms.set_xticks(xs, ticks, fontsize="small")
    ax_ms.legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, frameon=False)
    ratios = [("speedup", -0.27, dict(color="white", hatch="xx", edgecolor="dimgrey"), "paper rule (theoretical)"),
              ("latency_ov_speedup", 0.0, dict(color=[styles.of(r["label"]).colour for r in variants]),
               "measured vs FP32"),
              ("latency_ov_bf16_speedup", 0.27, dict(color="lightgrey", edgecolor="dimgrey"), "measured vs BF16")]
    for field, shift, style, label in ratios:  # a figure a record lacks (a peer's paper rule) is no bar, never 0
        shown = [(x, r[field], c) for x, r, c in zip(xs, variants, _colours(style, len(variants)))
                 if r.get(field) is not None]
        if shown:
            style = {**style, "color": [c for _, _, c in shown]}
            ax_x.bar_label(ax_x.bar([x + shift for x, _, _ in shown], [v for _, v, _ in shown], width=0.26,
                                    label=label, **style), fmt="%.2fx", fontsize="x-small")
    ax_x.axhline(1.0, color="black", linewidth=0.8)
    ax_x.set_ylabel("int8 speed-up (x)")
    ax_x.set_xticks(xs, ticks, fontsize="small")
    ax_x.legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=1, frameon=False)
    for ax in (ax_ms, ax_x):
        ax.grid(axis="y", alpha=0.3)
    first = variants[0]
    size, runs, threads = (first.get(f) for f in ("latency_ov_lr_size", "latency_ov_runs", "latency_ov_threads"))
    fig.suptitle(f"{model} x{scale}: measured OpenVINO CPU latency, LR {size}x{size}, median of {runs} interleaved "
                 f"runs, {threads} thread(s)", fontsize="medium")
    fig.tight_layout()
    return _save(fig, out_dir, f"{model}_x{scale}_latency_openvino")


# ------------------------------------------------------------------------------------------ trade-off (mixed precision)

def trade_off_figure(records: list[dict], model: str, scale: int, styles: Styles | None = None):
    """PSNR vs size, one panel per (size measure, dataset): filled markers uniform bits, hollow markers mixed
    precision, a solid line through each method's frontier, FP as a dashed line (its size is far to the right:
    drawn as a level, not a point). The legend sits right of the panels (bench.runner.plots' rule)."""
    from matplotlib.ticker import MaxNLocator

    styles = styles or Styles(records)
    datasets = _datasets(records)
    kinds = pareto.size_kinds(records)
    fig = _figure(3.9 * len(datasets) + 2.6, 3.5 * len(kinds) + 0.4)
    grid = fig.subplots(len(kinds), len(datasets), squeeze=False)
    for row, (size_field, kind) in enumerate(kinds):
        for ax, dataset in zip(grid[row], datasets):
            mine = [r for r in records if _ds(r) == dataset and r.get("psnr") is not None]
            series = pareto.trade_off_points(mine, size_field)
            for label, points in series.items():
                mpl = styles.mpl(label)
                front = pareto.pareto_front(points)
                if len(front) > 1:
                    ax.plot([p.size_bytes / 1e3 for p in front], [p.psnr for p in front], color=mpl["color"],
                            linewidth=1.4, zorder=2)
                for mixed in (False, True):
                    chosen = [p for p in points if p.mixed is mixed]
                    if chosen:
                        ax.plot([p.size_bytes / 1e3 for p in chosen], [p.psnr for p in chosen], linestyle="",
                                markersize=8, markerfacecolor="white" if mixed else mpl["color"],
                                markeredgewidth=pareto.MIXED_EDGE if mixed else 1.0, zorder=3, **mpl)
            refs = _references(ax, [r for r in mine if r["method"] == "fp"], styles)
            quantized = [p.psnr for points in series.values() for p in points]
            _honest_psnr_axis(ax, refs + quantized, quantized)
            ax.set_title(_title(dataset, records) if len(kinds) == 1 else
                         f"{_title(dataset, records)}\n({kind} size)")
            ax.xaxis.set_major_locator(MaxNLocator(5))  # sizes differ by a few KB: few, round ticks
            low, high = ax.get_xlim()  # only the ticks in view: an unseen label would still count in a layout check
            ax.set_xticks([t for t in ax.get_xticks() if low <= t <= high])
            ax.set_xlim(low, high)
            ax.set_xlabel(f"model size (KB, {kind})")
            ax.set_ylabel("PSNR (dB, Y)")
            ax.grid(alpha=0.3)
    shown = list(dict.fromkeys(r["label"] for r in records if is_quantized(r) and r.get("psnr") is not None))
    first = {r["label"]: r for r in reversed(records)}
    handles = [Line2D([], [], linestyle="", markersize=8, label=styles.name(first[label]), **styles.mpl(label))
               for label in shown]
    fp = next((r for r in records if r["method"] == "fp" and r.get("psnr") is not None), None)
    if fp is not None:
        handles.insert(0, Line2D([], [], linestyle="--", color=styles.of(fp["label"]).colour, label="FP"))
    handles += [Line2D([], [], linestyle="", marker="o", color="dimgrey", label="filled: uniform bits"),
                Line2D([], [], linestyle="", marker="o", color="dimgrey", markerfacecolor="white",
                       markeredgewidth=pareto.MIXED_EDGE, label="hollow: mixed precision"),
                Line2D([], [], color="dimgrey", label="line: the method's Pareto frontier")]
    fig.legend(handles=handles, loc="outside right center", fontsize="small")
    fig.suptitle(f"{model} x{scale}: PSNR vs model size, uniform and mixed precision")
    return fig


# ------------------------------------------------------------------------------------------ a run

def plot_run(records: list[dict], out_dir: str | Path, notes: list[str] | None = None) -> list[Path]:
    """All figures for the successful records of a run; returns the written paths. Figures with nothing to
    compare are skipped, with the reason appended to `notes` when given."""
    out_dir = Path(out_dir)
    ok = [r for r in records if r.get("status") == "ok"]
    styles = Styles(ok)
    notes = [] if notes is None else notes
    paths: list[Path] = []
    for model, scale in sorted({(r["model"], r["scale"]) for r in ok}):
        mine = [r for r in ok if r["model"] == model and r["scale"] == scale]
        uniform = pareto.uniform_only(mine)  # a mixed record's w_bits is its budget's: it is drawn by pareto
        skipped = skipped_charts(uniform, model, scale)  # the HTML report skips the same charts
        if "bits" not in skipped:
            paths += plot_psnr_vs_bits(uniform, model, scale, out_dir, styles)
        if "size" not in skipped:
            paths += plot_psnr_vs_size(uniform, model, scale, out_dir, styles)
        if pareto.has_mixed(mine):
            paths += _save(trade_off_figure(mine, model, scale, styles), out_dir, f"{model}_x{scale}_pareto")
        notes += skipped.values()
        if any(r.get("latency_ms") is not None for r in mine):
            paths += plot_latency(mine, model, scale, out_dir, styles)
        else:
            notes.append(f"{model} x{scale}: no latency figure: nothing was timed (latency runs: 0)")
        if any(_is_quantized(r) and r.get("latency_ort_int8_ms") is not None for r in mine):
            paths += plot_ort_latency(mine, model, scale, out_dir, styles)
        if any(_is_quantized(r) and r.get("latency_ov_int8_ms") is not None for r in mine):
            paths += plot_openvino_latency(mine, model, scale, out_dir, styles)
    return paths
