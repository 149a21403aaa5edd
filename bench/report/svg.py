"""Small static SVG charts with hover values, for the self-contained HTML report.

Why SVG and not plotly: plotly's bundled `plotly.min.js` is 4.8 MB and carries dozens of URL strings (map tile
servers, CDN fallbacks), so a page that inlines it can neither stay small for thousands of records nor be checked
to reference no external URL. A line or scatter chart of PSNR needs axes, points and a tooltip: a few hundred bytes
of SVG per chart. Each point carries its values twice: `data-tip` for the page's tooltip script and an SVG
`<title>`, which browsers show on hover even without JavaScript.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

# matplotlib's tab10, so the HTML colours match `bench plot`.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 12, 28, 42
LEGEND_ROW = 16
LEGEND_COLUMN, LEGEND_CHARS = 175, 28   # two legend columns per chart; longer names are cut


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str          # hover text, one line per "\n"


@dataclass
class Series:
    name: str
    points: list[Point]
    line: bool = True
    hollow: bool = False   # hollow markers: measured values beside theoretical ones


@dataclass(frozen=True)
class HLine:
    name: str
    y: float
    tip: str
    dash: str = "6 4"


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    hlines: list[HLine] = field(default_factory=list)
    x_ticks: list[float] | None = None   # None: "nice" ticks over the data range
    width: int = 420
    height: int = 300
    colors: dict[str, str] = field(default_factory=dict)  # series name -> colour, to match across charts


def assign_colors(names: list[str]) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return []
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _fmt_tick(value: float) -> str:
    return f"{value:.6g}"


class _Frame:
    """Data-to-pixel mapping of the plotting area."""

    def __init__(self, chart: Chart, x_ticks: list[float], y_ticks: list[float], legend_rows: int) -> None:
        self.x0, self.x1 = MARGIN_LEFT, chart.width - MARGIN_RIGHT
        self.y0, self.y1 = MARGIN_TOP, chart.height - MARGIN_BOTTOM - legend_rows * LEGEND_ROW
        self.x_ticks, self.y_ticks = x_ticks, y_ticks
        self.xlo, self.xhi = x_ticks[0], x_ticks[-1]
        self.ylo, self.yhi = y_ticks[0], y_ticks[-1]

    def px(self, x: float) -> float:
        span = self.xhi - self.xlo or 1.0
        return round(self.x0 + (x - self.xlo) / span * (self.x1 - self.x0), 1)

    def py(self, y: float) -> float:
        span = self.yhi - self.ylo or 1.0
        return round(self.y1 - (y - self.ylo) / span * (self.y1 - self.y0), 1)


def _x_ticks(chart: Chart, xs: list[float]) -> list[float]:
    if chart.x_ticks:
        # Category-like ticks (bit-widths): half a unit of room on both sides keeps the end points off the frame.
        ticks = sorted(chart.x_ticks)
        return [ticks[0] - 0.5, *ticks, ticks[-1] + 0.5]
    return nice_ticks(min(xs), max(xs))


def render_chart(chart: Chart) -> str:
    """The chart as an inline `<svg>` element (no xmlns needed inside HTML5)."""
    xs = [p.x for s in chart.series for p in s.points]
    ys = [p.y for s in chart.series for p in s.points] + [h.y for h in chart.hlines]
    title = f'<text class="chart-title" x="{chart.width / 2}" y="16" text-anchor="middle">{escape(chart.title)}</text>'
    if not xs or not ys:
        return (f'<svg class="chart" width="{chart.width}" height="80" role="img">{title}'
                f'<text x="{chart.width / 2}" y="50" text-anchor="middle">no values to plot</text></svg>')
    names = [s.name for s in chart.series] + [h.name for h in chart.hlines]
    per_row = max(1, (chart.width - MARGIN_LEFT) // LEGEND_COLUMN)
    legend_rows = math.ceil(len(dict.fromkeys(names)) / per_row)
    frame = _Frame(chart, _x_ticks(chart, xs), nice_ticks(min(ys), max(ys)), legend_rows)
    height = chart.height
    parts = [f'<svg class="chart" width="{chart.width}" height="{height}" role="img" '
             f'aria-label="{escape(chart.title)}">', title]
    parts += _axes(chart, frame)
    colors = {**assign_colors(names), **chart.colors}
    for line in chart.hlines:
        y = frame.py(line.y)
        parts.append(f'<line class="hline" x1="{frame.x0}" x2="{frame.x1}" y1="{y}" y2="{y}" stroke="{colors[line.name]}" '
                     f'stroke-dasharray="{line.dash}" data-tip="{escape(line.tip)}"><title>{escape(line.tip)}</title></line>')
    for series in chart.series:
        parts += _series(series, frame, colors[series.name])
    parts += _legend(names, colors, chart, frame, per_row)
    parts.append("</svg>")
    return "".join(parts)


def _axes(chart: Chart, frame: _Frame) -> list[str]:
    parts = [f'<rect class="plot-area" x="{frame.x0}" y="{frame.y0}" width="{frame.x1 - frame.x0}" '
             f'height="{frame.y1 - frame.y0}"/>']
    for tick in frame.x_ticks:
        if chart.x_ticks and tick not in chart.x_ticks:
            continue  # the two padding ticks carry no label
        x = frame.px(tick)
        parts.append(f'<line class="grid" x1="{x}" x2="{x}" y1="{frame.y0}" y2="{frame.y1}"/>'
                     f'<text class="tick" x="{x}" y="{frame.y1 + 14}" text-anchor="middle">{_fmt_tick(tick)}</text>')
    for tick in frame.y_ticks:
        y = frame.py(tick)
        parts.append(f'<line class="grid" x1="{frame.x0}" x2="{frame.x1}" y1="{y}" y2="{y}"/>'
                     f'<text class="tick" x="{frame.x0 - 4}" y="{y + 4}" text-anchor="end">{_fmt_tick(tick)}</text>')
    parts.append(f'<text class="axis-label" x="{(frame.x0 + frame.x1) / 2}" y="{frame.y1 + 30}" '
                 f'text-anchor="middle">{escape(chart.x_label)}</text>')
    parts.append(f'<text class="axis-label" transform="translate(14 {(frame.y0 + frame.y1) / 2}) rotate(-90)" '
                 f'text-anchor="middle">{escape(chart.y_label)}</text>')
    return parts


def _series(series: Series, frame: _Frame, color: str) -> list[str]:
    points = sorted(series.points, key=lambda p: p.x)
    parts = []
    if series.line and len(points) > 1:
        path = " ".join(f"{frame.px(p.x)},{frame.py(p.y)}" for p in points)
        parts.append(f'<polyline class="series" points="{path}" stroke="{color}"/>')
    fill = "white" if series.hollow else color
    for p in points:
        tip = escape(p.tip)
        parts.append(f'<circle class="pt" cx="{frame.px(p.x)}" cy="{frame.py(p.y)}" r="4" fill="{fill}" stroke="{color}" '
                     f'data-tip="{tip}"><title>{tip}</title></circle>')
    return parts


def _legend(names: list[str], colors: dict[str, str], chart: Chart, frame: _Frame, per_row: int) -> list[str]:
    parts = []
    unique = list(dict.fromkeys(names))
    for i, name in enumerate(unique):
        x = frame.x0 + (i % per_row) * LEGEND_COLUMN
        y = chart.height - (math.ceil(len(unique) / per_row) - i // per_row) * LEGEND_ROW + 4
        parts.append(f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{colors[name]}"/>'
                     f'<text class="legend" x="{x + 14}" y="{y + 1}">{escape(name[:LEGEND_CHARS])}</text>')
    return parts
