"""The size/accuracy trade-off of a run: PSNR against model size per method, uniform and mixed-precision points,
and each method's Pareto frontier (`<model>_x<s>_pareto` in `bench plot`, the "trade-off" charts of
`bench report`).

A mixed-precision record (`method_description.mixed`, bench.mixed) keeps `w_bits`/`a_bits` = the uniform
bit-width whose size and BOPs are its budget, so on a PSNR-vs-bits axis it would sit on top of that uniform
point: the bits and size figures draw the uniform records only (`uniform_only`) and this figure draws both.

A point is on its method's frontier when no other point of the same method (uniform or mixed, same dataset,
same size measure) is at most as large and at least as good, one of the two strictly: the frontier is what an
engineer with a size budget can pick from. Sizes are the cost model's (`model_size_bytes`) and, where the
records hold it, the measured packed file's (`packed_size_bytes`, bench export --format packed), each its own
panel row: a point is never compared with a point measured the other way.

This module holds no drawing: `bench.runner.plots.trade_off_figure` draws the figure from it, and the HTML report
imports it without matplotlib.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bench.runner.records import mixed_tag
from bench.runner.style import is_quantized

# (record field, what it measures), in panel-row order.
SIZE_KINDS = (("model_size_bytes", "cost model"), ("packed_size_bytes", "measured, packed"))
MIXED_EDGE = 1.6   # marker edge width of a hollow (mixed) point: it stays visible over a frontier line


def is_mixed(record: dict) -> bool:
    return mixed_tag(record) is not None


def has_mixed(records: list[dict]) -> bool:
    return any(is_mixed(r) and r.get("psnr") is not None for r in records)


def uniform_only(records: list[dict]) -> list[dict]:
    """The records without mixed-precision ones (for the figures whose x axis is the bit-width)."""
    return [r for r in records if not is_mixed(r)]


def bits_text(record: dict) -> str:
    """"W4A4" or the mixed tag, as the tables write them."""
    tag = mixed_tag(record)
    return tag if tag is not None else f"W{record['w_bits']}A{record['a_bits']}"


@dataclass(frozen=True)
class TradeOffPoint:
    label: str          # the method label (one colour and marker, bench.runner.style)
    size_bytes: int
    psnr: float
    mixed: bool
    bits: str           # "W4A4" or "mixed4-r1"
    record: dict = field(compare=False, repr=False, hash=False)


def trade_off_points(records: list[dict], size_field: str = "model_size_bytes") -> dict[str, list[TradeOffPoint]]:
    """Method label -> its quantized points (uniform and mixed) with a PSNR and a `size_field`, sorted by size.
    `records`: one dataset's records."""
    points: dict[str, list[TradeOffPoint]] = {}
    for r in records:
        if is_quantized(r) and r.get("psnr") is not None and r.get(size_field):
            points.setdefault(r["label"], []).append(
                TradeOffPoint(r["label"], int(r[size_field]), float(r["psnr"]), is_mixed(r), bits_text(r), r))
    return {label: sorted(pts, key=lambda p: (p.size_bytes, -p.psnr)) for label, pts in points.items()}


def pareto_front(points: list[TradeOffPoint]) -> list[TradeOffPoint]:
    """The points no other point dominates (no larger, no worse, and better in one), by increasing size."""
    front: list[TradeOffPoint] = []
    for p in sorted(points, key=lambda p: (p.size_bytes, -p.psnr)):
        if not front or p.psnr > front[-1].psnr:   # smaller-or-equal points all have a lower PSNR
            front.append(p)
    return front


def size_kinds(records: list[dict]) -> list[tuple[str, str]]:
    """The size measures (field, name) some quantized record of `records` holds, in SIZE_KINDS order."""
    return [(f, kind) for f, kind in SIZE_KINDS
            if any(is_quantized(r) and r.get(f) and r.get("psnr") is not None for r in records)]


def mixed_gains(records: list[dict]) -> list[tuple[str, str, str, float]]:
    """(label, dataset label, mixed tag, PSNR of mixed minus the uniform record of its budget) per mixed record
    whose uniform counterpart (same label, dataset and w/a bits) is in `records`."""
    uniform = {(r["label"], r.get("dataset_label") or r["dataset"], r["w_bits"], r["a_bits"]): r["psnr"]
               for r in records if is_quantized(r) and not is_mixed(r) and r.get("psnr") is not None}
    gains = []
    for r in records:
        if is_mixed(r) and r.get("psnr") is not None:
            key = (r["label"], r.get("dataset_label") or r["dataset"], r["w_bits"], r["a_bits"])
            if key in uniform:
                gains.append((r["label"], key[1], mixed_tag(r), r["psnr"] - uniform[key]))
    return gains


__all__ = ["SIZE_KINDS", "TradeOffPoint", "bits_text", "has_mixed", "is_mixed", "mixed_gains", "mixed_tag",
           "pareto_front", "size_kinds", "trade_off_points", "uniform_only"]
