"""What every figure of a run shares, PNG, PDF and HTML alike: one colour and marker per method, the tables'
method names, honest PSNR ranges, and which charts have something to compare.

`bench plot` (bench.runner.plots, matplotlib) and `bench report` (bench.report.svg, inline SVG) both draw from
`Styles`, so a method is the same colour and shape in a paper figure and on the report page. Colours are hex
strings and markers matplotlib marker codes; bench.report.svg draws each code as the same shape. This module
imports no plotting library: the HTML report loads it without matplotlib.
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.runner.tables import DISPLAY_NAMES, display_names

BASELINES = ("fp", "bicubic")
# The PSNR axis spans at least this much, so that differences of a few thousandths of a dB do not fill a chart.
MIN_PSNR_SPAN_DB = 0.5
# Quantized methods of one panel closer than this are called a tie, not a ranking.
TIE_DB = 0.01

# Built-in methods keep their colour (matplotlib's tab10) and marker in every run. FP is black, bicubic grey.
METHOD_STYLES = {
    "fp": ("#000000", "*"), "bicubic": ("#7f7f7f", "h"),
    "minmax": ("#1f77b4", "o"), "percentile": ("#ff7f0e", "s"), "emmse": ("#2ca02c", "^"),
    "ptq4sr": ("#d62728", "D"), "dobi": ("#9467bd", "v"), "2dquant": ("#8c564b", "P"),
    "noisyquant": ("#e377c2", "X"), "condiquant": ("#bcbd22", "<"),
}
# Other labels (a second variant of a method, a plugin) take the next free colour and marker, in label order.
SPARE_COLOURS = ("#17becf", "#b8860b", "#000080", "#008080", "#dc143c", "#4b0082", "#6b8e23", "#ff1493")
SPARE_MARKERS = (">", "d", "p", "8", "o", "s", "^", "D")
MARKERS = tuple(dict.fromkeys([m for _, m in METHOD_STYLES.values()] + list(SPARE_MARKERS)))


@dataclass(frozen=True)
class MethodStyle:
    colour: str     # "#rrggbb"
    marker: str     # matplotlib marker code; bench.report.svg draws the same shape


def is_quantized(record: dict) -> bool:
    return record["method"] not in BASELINES


class Styles:
    """Colour, marker and shown name of every method label of a run, the same in every figure and format."""

    def __init__(self, records: list[dict]) -> None:
        method_of = {r["label"]: r["method"] for r in records}
        labels = sorted(method_of, key=lambda label: (method_of[label] not in BASELINES, label))
        self.style: dict[str, MethodStyle] = {}
        taken: set[str] = set()
        for label in labels:  # the first label of a built-in method (in label order) gets its own style
            builtin = METHOD_STYLES.get(method_of[label])
            if builtin is not None and method_of[label] not in taken:
                self.style[label] = MethodStyle(*builtin)
                taken.add(method_of[label])
        spare = iter(zip(SPARE_COLOURS, SPARE_MARKERS))
        for label in (label for label in labels if label not in self.style):
            colour, marker = next(spare, ("#7f7f7f", "o"))
            self.style[label] = MethodStyle(colour, marker)
        self.names = display_names(records)  # the tables' row names

    def name(self, record: dict) -> str:
        return self.names.get(record["label"], DISPLAY_NAMES.get(record["label"], record["label"]))

    def of(self, label: str) -> MethodStyle:
        return self.style.get(label, MethodStyle("#7f7f7f", "o"))

    def mpl(self, label: str) -> dict:
        """matplotlib keyword arguments of a label's colour and marker."""
        style = self.of(label)
        return {"color": style.colour, "marker": style.marker}


# ------------------------------------------------------------------------------------------ honest ranges

def psnr_limits(values: list[float]) -> tuple[float, float] | None:
    """A y-range of at least MIN_PSNR_SPAN_DB around `values` (8 % margins when they spread wider)."""
    if not values:
        return None
    low, high = min(values), max(values)
    pad = max((MIN_PSNR_SPAN_DB - (high - low)) / 2, 0.08 * (high - low))
    return low - pad, high + pad


def tie_note(quantized: list[float]) -> str | None:
    """The note a chart carries when its quantized methods are within TIE_DB of each other, else None."""
    if len(quantized) < 2 or max(quantized) - min(quantized) >= TIE_DB:
        return None
    return (f"quantized methods within {max(quantized) - min(quantized):.3f} dB: "
            f"differences below {TIE_DB} dB, not a ranking")


# ------------------------------------------------------------------------------------------ what to draw

def bit_widths(records: list[dict]) -> list[tuple]:
    """The (W, A) bit-widths of the quantized records with a PSNR."""
    return sorted({(r["w_bits"], r["a_bits"]) for r in records if is_quantized(r) and r.get("psnr") is not None})


def model_sizes(records: list[dict]) -> set:
    """The cost-model sizes of the records with a PSNR (FP's and each quantized one's)."""
    return {r["model_size_bytes"] for r in records if r.get("model_size_bytes") and r.get("psnr") is not None}


def skipped_charts(records: list[dict], model: str, scale: int) -> dict[str, str]:
    """Chart kind ("bits", "size") -> why it is not drawn for this model and scale: a chart needs two x values.
    A PSNR-vs-bits chart of one bit-width is one point per method, a ranking dressed as a trend."""
    reasons = {}
    bits = bit_widths(records)
    if len(bits) < 2:
        reasons["bits"] = f"{model} x{scale}: no PSNR-vs-bits figure: the run has {len(bits)} bit-width(s)"
    sizes = model_sizes(records)
    if len(sizes) < 2:
        reasons["size"] = f"{model} x{scale}: no PSNR-vs-size figure: the run has {len(sizes)} model size(s)"
    return reasons
