"""Figures of a run, each saved as PNG and PDF (matplotlib's Agg backend: no display needed).

Per (model, scale):
  * `<model>_x<s>_psnr_vs_bits`: one panel per dataset, PSNR against W bits, one line per method,
    FP and bicubic as horizontal references;
  * `<model>_x<s>_psnr_vs_size`: PSNR against model size (MB, bench.cost), one marker per method;
  * `<model>_x<s>_latency`: median forward latency on the fixed LR input, FP vs each quantized cell
    (labelled fake-quant: simulated quantization, not integer kernels).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.runner.tables import DATASET_ORDER, DISPLAY_NAMES

FORMATS = ("png", "pdf")


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


def _datasets(records: list[dict]) -> list[str]:
    labels = {r.get("dataset_label") or r["dataset"] for r in records}
    return sorted(labels, key=lambda d: (DATASET_ORDER.index(d) if d in DATASET_ORDER else 99, d))


def _ds(record: dict) -> str:
    return record.get("dataset_label") or record["dataset"]


def _is_quantized(record: dict) -> bool:
    return record["method"] not in ("fp", "bicubic")


def plot_psnr_vs_bits(records: list[dict], model: str, scale: int, out_dir: Path) -> list[Path]:
    datasets = _datasets(records)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in records if _ds(r) == dataset]
        for label in dict.fromkeys(r["label"] for r in mine if _is_quantized(r)):
            points = sorted((r["w_bits"], r["psnr"]) for r in mine if r["label"] == label and r["psnr"] is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=_name(next(r for r in mine if r["label"] == label)))
        for method, style in (("fp", "--"), ("bicubic", ":")):
            ref = next((r for r in mine if r["method"] == method and r["psnr"] is not None), None)
            if ref is not None:
                ax.axhline(ref["psnr"], linestyle=style, color="grey", label=_name(ref))
        ax.set_title(dataset)
        ax.set_xlabel("weight/activation bits")
        ax.set_ylabel("PSNR (dB, Y)")
        bits = sorted({r["w_bits"] for r in mine if _is_quantized(r)})
        if bits:
            ax.set_xticks(bits)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{model} x{scale}: PSNR vs bits", y=1.04)
    return _save(fig, out_dir, f"{model}_x{scale}_psnr_vs_bits")


def plot_psnr_vs_size(records: list[dict], model: str, scale: int, out_dir: Path) -> list[Path]:
    datasets = _datasets(records)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4 * len(datasets), 3.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in records if _ds(r) == dataset and r.get("model_size_bytes") and r["psnr"] is not None]
        for label in dict.fromkeys(r["label"] for r in mine):
            points = sorted((r["model_size_bytes"] / 1e6, r["psnr"]) for r in mine if r["label"] == label)
            ax.plot(*zip(*points), marker="o", linestyle="-" if len(points) > 1 else "",
                    label=_name(next(r for r in mine if r["label"] == label)))
        ax.set_title(dataset)
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("PSNR (dB, Y)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.suptitle(f"{model} x{scale}: PSNR vs model size", y=1.04)
    return _save(fig, out_dir, f"{model}_x{scale}_psnr_vs_size")


def plot_latency(records: list[dict], model: str, scale: int, out_dir: Path) -> list[Path]:
    bars: dict[str, float] = {}
    for r in records:
        if r.get("latency_fp_ms") is not None:
            bars.setdefault("FP", r["latency_fp_ms"])
        if _is_quantized(r) and r.get("latency_ms") is not None:
            bars.setdefault(f"{_name(r)} W{r['w_bits']}A{r['a_bits']}", r["latency_ms"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(bars) + 2), 3.4))
    if bars:
        colors = ["tab:grey"] + ["tab:blue"] * (len(bars) - 1)
        ax.bar(list(bars), list(bars.values()), color=colors[:len(bars)])
        ax.tick_params(axis="x", rotation=45)
    size = next((r.get("latency_lr_size") for r in records if r.get("latency_lr_size")), None)
    ax.set_ylabel("median latency (ms)")
    ax.set_title(f"{model} x{scale}: latency, LR {size}x{size} (quantized = fake-quant)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir, f"{model}_x{scale}_latency")


def plot_run(records: list[dict], out_dir: str | Path) -> list[Path]:
    """All figures for the successful records of a run; returns the written paths."""
    out_dir = Path(out_dir)
    ok = [r for r in records if r.get("status") == "ok"]
    paths: list[Path] = []
    for model, scale in sorted({(r["model"], r["scale"]) for r in ok}):
        mine = [r for r in ok if r["model"] == model and r["scale"] == scale]
        paths += plot_psnr_vs_bits(mine, model, scale, out_dir)
        paths += plot_psnr_vs_size(mine, model, scale, out_dir)
        paths += plot_latency(mine, model, scale, out_dir)
    return paths
