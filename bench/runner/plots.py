"""Figures of a run, each saved as PNG and PDF (matplotlib's Agg backend: no display needed).

Per (model, scale):
  * `<model>_x<s>_psnr_vs_bits`: one panel per dataset, PSNR against W bits, one line per method, FP and
    bicubic as horizontal references; drawn only when the run has two or more bit-widths;
  * `<model>_x<s>_psnr_vs_size`: PSNR against model size (MB), one marker per method: the cost model's size
    (bench.cost, filled) and, where the records hold it, the measured packed file (`bench export --format
    packed`, hollow, dotted); drawn only when the run has two or more cost-model sizes (FP and a quantized one);
  * `<model>_x<s>_latency`: median forward latency with its interquartile range and N, FP next to each
    quantized variant timed in turns with it (labelled fake-quant: simulated quantization, not integer kernels);
  * `<model>_x<s>_latency_onnxruntime`: where the records hold it (`latency: {runtime: onnxruntime}`), the
    measured onnxruntime FP32 and int8 QDQ medians of each variant, and its measured speed-up beside the
    speed-up the paper's rule predicts.

What keeps them honest:
  * one colour and marker per method label in every figure of a run (FP black, bicubic grey);
  * the PSNR axis spans at least MIN_PSNR_SPAN_DB, without offset notation, so that differences of a few
    thousandths of a dB do not look like a ranking; when the quantized methods of a panel are within
    TIE_DB of each other the panel says so;
  * a figure with nothing to compare is not drawn, and `plot_run` says why in its notes.
Dataset titles are the tables' column headers (bench.runner.tables), e.g. "Set5 (crop 64)".
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.runner.latency import spread_ms
from bench.runner.tables import DATASET_ORDER, DISPLAY_NAMES, _dataset_header, display_names

FORMATS = ("png", "pdf")
MIN_PSNR_SPAN_DB = 0.5
TIE_DB = 0.01
FP_COLOUR, BICUBIC_COLOUR = "black", "tab:grey"
# Built-in methods keep their colour across runs; other labels take the next free colour, in label order.
METHOD_COLOURS = {"minmax": "tab:blue", "percentile": "tab:orange", "emmse": "tab:green", "ptq4sr": "tab:red",
                  "dobi": "tab:purple", "2dquant": "tab:brown"}
SPARE_COLOURS = ("tab:pink", "tab:olive", "tab:cyan", "darkgoldenrod", "navy", "teal", "crimson", "indigo")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")


# ------------------------------------------------------------------------------------------ helpers

def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _name(record: dict) -> str:
    return DISPLAY_NAMES.get(record["label"], record["label"])


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
    return record["method"] not in ("fp", "bicubic")


class Styles:
    """Colour and marker of every method label of a run, the same in every figure."""

    def __init__(self, records: list[dict]) -> None:
        labels = list(dict.fromkeys(r["label"] for r in records if _is_quantized(r)))
        method_of = {r["label"]: r["method"] for r in records}
        taken: set[str] = set()
        self.colour: dict[str, str] = {}
        for label in labels:  # first label of a built-in method: its own colour
            colour = METHOD_COLOURS.get(method_of[label])
            if colour is not None and colour not in taken:
                self.colour[label] = colour
                taken.add(colour)
        spare = iter(c for c in SPARE_COLOURS if c not in taken)
        for label in sorted(set(labels) - set(self.colour)):
            self.colour[label] = next(spare, "tab:grey")
        self.marker = {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(labels)}
        self.names = display_names(records)  # the tables' row names

    def name(self, record: dict) -> str:
        return self.names.get(record["label"], _name(record))

    def of(self, label: str) -> dict:
        return {"color": self.colour.get(label, "tab:grey"), "marker": self.marker.get(label, "o")}


def _honest_psnr_axis(ax, values: list[float], quantized: list[float]) -> None:
    """A y-range of at least MIN_PSNR_SPAN_DB around the values, in plain dB; a note when methods tie."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if values:
        low, high = min(values), max(values)
        pad = max((MIN_PSNR_SPAN_DB - (high - low)) / 2, 0.08 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    if len(quantized) > 1 and max(quantized) - min(quantized) < TIE_DB:
        ax.text(0.02, 0.03, f"quantized methods within {max(quantized) - min(quantized):.3f} dB:\n"
                            f"differences below {TIE_DB} dB, not a ranking",
                transform=ax.transAxes, fontsize="x-small", va="bottom", color="dimgrey")


def _references(ax, mine: list[dict]) -> list[float]:
    """FP and bicubic as horizontal lines; returns their PSNRs."""
    values = []
    for method, style, colour in (("fp", "--", FP_COLOUR), ("bicubic", ":", BICUBIC_COLOUR)):
        ref = next((r for r in mine if r["method"] == method and r.get("psnr") is not None), None)
        if ref is not None:
            ax.axhline(ref["psnr"], linestyle=style, color=colour, linewidth=1, label=_name(ref))
            values.append(ref["psnr"])
    return values


# ------------------------------------------------------------------------------------------ figures

def plot_psnr_vs_bits(records: list[dict], model: str, scale: int, out_dir: Path,
                      styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    datasets = _datasets(records)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in records if _ds(r) == dataset and r.get("psnr") is not None]
        quantized = [r for r in mine if _is_quantized(r)]
        for label in dict.fromkeys(r["label"] for r in quantized):
            points = sorted((r["w_bits"], r["psnr"]) for r in quantized if r["label"] == label)
            ax.plot(*zip(*points), label=styles.name(next(r for r in quantized if r["label"] == label)), **styles.of(label))
        refs = _references(ax, mine)
        _honest_psnr_axis(ax, refs + [r["psnr"] for r in quantized], [r["psnr"] for r in quantized])
        ax.set_title(_title(dataset, records))
        ax.set_xlabel("weight/activation bits")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.set_xticks(sorted({r["w_bits"] for r in quantized}))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{model} x{scale}: PSNR vs bits", y=1.04)
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


def plot_psnr_vs_size(records: list[dict], model: str, scale: int, out_dir: Path,
                      styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    datasets = _datasets(records)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in records if _ds(r) == dataset and r.get("model_size_bytes") and r.get("psnr") is not None]
        quantized = [r for r in mine if _is_quantized(r)]
        for r in (r for r in mine if r["method"] == "fp"):
            ax.plot(r["model_size_bytes"] / 1e6, r["psnr"], marker="*", markersize=11, color=FP_COLOUR,
                    linestyle="", label=f"{_name(r)} (cost model)")
        for name, label, kind, points in size_series(mine, styles):
            measured = kind != "cost model"
            line = (":" if measured else "-") if len(points) > 1 else ""
            ax.plot(*zip(*points), linestyle=line, markerfacecolor="none" if measured else None, markersize=8,
                    label=name, **styles.of(label))
        values = [r["psnr"] for r in mine]
        _honest_psnr_axis(ax, values, [r["psnr"] for r in quantized])
        ax.set_title(_title(dataset, records))
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{model} x{scale}: PSNR vs model size (filled: cost model; hollow: measured packed file)", y=1.04)
    return _save(fig, out_dir, f"{model}_x{scale}_psnr_vs_size")


def _times(record: dict, field: str, median_field: str) -> list[float]:
    """Every timed run of a record (older records kept only the median)."""
    times = record.get(field)
    if times:
        return list(times)
    return [record[median_field]] if record.get(median_field) is not None else []


def _bar(ax, x: float, times: list[float], colour: str, **kwargs) -> None:
    median = statistics.median(times)
    q1, q3 = spread_ms(times)
    ax.bar(x, median, width=0.38, color=colour, yerr=[[median - q1], [q3 - median]], capsize=3,
           error_kw={"elinewidth": 1}, **kwargs)


def plot_latency(records: list[dict], model: str, scale: int, out_dir: Path,
                 styles: Styles | None = None) -> list[Path]:
    styles = styles or Styles(records)
    fp = next((r for r in records if r["method"] == "fp" and _times(r, "latency_times_ms", "latency_ms")), None)
    variants: dict[tuple, dict] = {}
    for r in records:  # one calibration serves every dataset: its latency appears once
        if _is_quantized(r) and _times(r, "latency_times_ms", "latency_ms"):
            variants.setdefault((r["label"], r["w_bits"], r["a_bits"]), r)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * (len(variants) + 1) + 2), 3.6))
    ticks, labels, runs = [], [], set()
    if fp is not None:
        times = _times(fp, "latency_times_ms", "latency_ms")
        _bar(ax, 0.0, times, FP_COLOUR, label="FP (alone)")
        ticks.append(0.0)
        labels.append(f"FP\nN={len(times)}")
        runs.add(len(times))
    for i, ((label, w, a), r) in enumerate(variants.items(), start=1):
        quant = _times(r, "latency_times_ms", "latency_ms")
        paired = _times(r, "latency_fp_times_ms", "latency_fp_ms")
        if paired:
            _bar(ax, i - 0.2, paired, "lightgrey", hatch="//", edgecolor="dimgrey",
                 label="FP, timed in turns with the variant" if i == 1 else None)
        _bar(ax, i + 0.2 if paired else i, quant, styles.of(label)["color"])
        ratio = f"\n{statistics.median(quant) / statistics.median(paired):.2f}x FP" if paired else ""
        ticks.append(float(i))
        labels.append(f"{styles.name(r)}\nW{w}A{a}, N={len(quant)}{ratio}")
        runs.add(len(quant))
    ax.set_xticks(ticks, labels, fontsize="small")
    size = next((r.get("latency_lr_size") for r in records if r.get("latency_lr_size")), None)
    warmup = next((r.get("latency_warmup") for r in records if r.get("latency_warmup") is not None), None)
    n_text = f"N={runs.pop()}" if len(runs) == 1 else "N per bar"
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{model} x{scale}: forward latency, LR {size}x{size}, quantized = fake-quant\n"
                 f"median of {n_text} runs" + (f" after {warmup} warm-up" if warmup else "") +
                 "; whiskers: interquartile range", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    if variants:
        ax.legend(fontsize="x-small", loc="upper left")
    return _save(fig, out_dir, f"{model}_x{scale}_latency")


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
    for r in records:
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
    fig, (ax_ms, ax_x) = plt.subplots(1, 2, figsize=(max(7.0, 2.4 * len(variants) + 3), 3.6))
    ticks = [f"{v.name}\n{v.bits}" for v in variants]
    xs = list(range(len(variants)))
    bars = [ax_ms.bar([x - 0.2 for x in xs], [v.fp32_ms for v in variants], width=0.38, color="lightgrey",
                      hatch="//", edgecolor="dimgrey", label="FP32 export (measured)"),
            ax_ms.bar([x + 0.2 for x in xs], [v.int8_ms for v in variants], width=0.38,
                      color=[styles.of(v.label)["color"] for v in variants], label="int8 QDQ export (measured)")]
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
                            color=[styles.of(v.label)["color"] for v in variants], label="measured (onnxruntime)"),
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
                 + (f", {threads} thread(s)" if threads else ""), fontsize="medium", y=1.06)
    fig.tight_layout()
    return _save(fig, out_dir, f"{model}_x{scale}_latency_onnxruntime")


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
        quantized = [r for r in mine if _is_quantized(r)]
        bits = sorted({(r["w_bits"], r["a_bits"]) for r in quantized if r.get("psnr") is not None})
        if len(bits) > 1:
            paths += plot_psnr_vs_bits(mine, model, scale, out_dir, styles)
        else:
            notes.append(f"{model} x{scale}: no PSNR-vs-bits figure: the run has {len(bits)} bit-width(s)")
        sizes = {r["model_size_bytes"] for r in mine if r.get("model_size_bytes") and r.get("psnr") is not None}
        if len(sizes) > 1:
            paths += plot_psnr_vs_size(mine, model, scale, out_dir, styles)
        else:
            notes.append(f"{model} x{scale}: no PSNR-vs-size figure: the run has {len(sizes)} model size(s)")
        if any(r.get("latency_ms") is not None for r in mine):
            paths += plot_latency(mine, model, scale, out_dir, styles)
        else:
            notes.append(f"{model} x{scale}: no latency figure: nothing was timed (latency runs: 0)")
        if any(_is_quantized(r) and r.get("latency_ort_int8_ms") is not None for r in mine):
            paths += plot_ort_latency(mine, model, scale, out_dir, styles)
    return paths
