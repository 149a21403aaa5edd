"""Small static SVG charts with hover values, for the self-contained HTML report.

Why SVG and not plotly: plotly's bundled `plotly.min.js` is 4.8 MB and carries dozens of URL strings (map tile
servers, CDN fallbacks), so a page that inlines it can neither stay small for thousands of records nor be checked
to reference no external URL. A line or scatter chart of PSNR needs axes, points and a tooltip: a few hundred bytes
of SVG per chart. Each point carries its values twice: `data-tip` for the page's tooltip script and an SVG
`<title>`, which browsers show on hover even without JavaScript.

Colours and markers come from the caller (bench.runner.style, which `bench plot` uses too): each point is drawn
as the shape of its matplotlib marker code, and names it in `data-marker`. The legend and any note sit below
the plotting area, never over a point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 12, 28, 42
LEGEND_ROW = 16
NOTE_ROW = 14
LEGEND_COLUMN, LEGEND_CHARS = 175, 28   # two legend columns per chart; longer names are cut
MARKER_RADIUS = 4.5
DEFAULT_COLOUR = "#7f7f7f"


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    tip: str          # hover text, one line per "\n"


@dataclass
class Series:
    name: str
    points: list[Point]
    colour: str = DEFAULT_COLOUR
    marker: str = "o"      # a matplotlib marker code (see marker_shape)
    line: bool = True
    hollow: bool = False   # hollow markers: measured values beside theoretical ones


@dataclass(frozen=True)
class HLine:
    name: str
    y: float
    tip: str
    dash: str = "6 4"
    colour: str = DEFAULT_COLOUR


@dataclass(frozen=True)
class LegendEntry:
    name: str
    colour: str
    marker: str | None = "o"   # None: a line sample (dash) instead of a marker
    hollow: bool = False
    dash: str | None = None


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
    y_range: tuple[float, float] | None = None   # at least this y-range (bench.runner.style.psnr_limits)
    note: str | None = None                      # under the x label, e.g. "... not a ranking"
    legend: list[LegendEntry] | None = None      # None: one entry per series and line, by name


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

    def __init__(self, chart: Chart, x_ticks: list[float], y_ticks: list[float], bottom: float) -> None:
        self.x0, self.x1 = MARGIN_LEFT, chart.width - MARGIN_RIGHT
        self.y0, self.y1 = MARGIN_TOP, bottom
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


def _legend_entries(chart: Chart) -> list[LegendEntry]:
    if chart.legend is not None:
        return chart.legend
    entries = {s.name: LegendEntry(s.name, s.colour, s.marker, s.hollow) for s in chart.series}
    for line in chart.hlines:
        entries.setdefault(line.name, LegendEntry(line.name, line.colour, None, dash=line.dash))
    return list(entries.values())


def render_chart(chart: Chart) -> str:
    """The chart as an inline `<svg>` element (no xmlns needed inside HTML5)."""
    xs = [p.x for s in chart.series for p in s.points]
    ys = [p.y for s in chart.series for p in s.points] + [h.y for h in chart.hlines]
    title = f'<text class="chart-title" x="{chart.width / 2}" y="16" text-anchor="middle">{escape(chart.title)}</text>'
    if not xs or not ys:
        return (f'<svg class="chart" width="{chart.width}" height="80" role="img">{title}'
                f'<text x="{chart.width / 2}" y="50" text-anchor="middle">no values to plot</text></svg>')
    entries = _legend_entries(chart)
    per_row = max(1, (chart.width - MARGIN_LEFT) // LEGEND_COLUMN)
    legend_rows = math.ceil(len(entries) / per_row)
    # A note splits after its first ": " (as under `bench plot`'s axes), so that it fits the chart's width.
    note_lines = chart.note.split(": ", 1) if chart.note else []
    note_lines = [note_lines[0] + ":", note_lines[1]] if len(note_lines) == 2 else note_lines
    note_rows = len(note_lines)
    y_low, y_high = min(ys), max(ys)
    if chart.y_range is not None:
        y_low, y_high = min(y_low, chart.y_range[0]), max(y_high, chart.y_range[1])
    # The chart grows by its legend and note rows, so that the plotting area keeps its height.
    height = chart.height + legend_rows * LEGEND_ROW + note_rows * NOTE_ROW
    frame = _Frame(chart, _x_ticks(chart, xs), nice_ticks(y_low, y_high), height - MARGIN_BOTTOM
                   - legend_rows * LEGEND_ROW - note_rows * NOTE_ROW)
    parts = [f'<svg class="chart" width="{chart.width}" height="{height}" role="img" '
             f'aria-label="{escape(chart.title)}">', title]
    parts += _axes(chart, frame)
    for line in chart.hlines:
        y = frame.py(line.y)
        parts.append(f'<line class="hline" x1="{frame.x0}" x2="{frame.x1}" y1="{y}" y2="{y}" stroke="{line.colour}" '
                     f'stroke-dasharray="{line.dash}" data-name="{escape(line.name)}" data-tip="{escape(line.tip)}">'
                     f'<title>{escape(line.tip)}</title></line>')
    for series in chart.series:
        parts += _series(series, frame)
    if note_lines:
        parts.append(f'<text class="chart-note" data-note="{escape(chart.note)}" text-anchor="middle">'
                     + "".join(f'<tspan x="{(frame.x0 + frame.x1) / 2}" y="{frame.y1 + 30 + NOTE_ROW * (i + 1)}">'
                               f'{escape(line)}</tspan>' for i, line in enumerate(note_lines)) + '</text>')
    parts += _legend(entries, frame, height, per_row)
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


# ------------------------------------------------------------------------------------------ markers

def _polygon(n: int, radius: float, rotation_deg: float, inner: float | None = None) -> list[tuple[float, float]]:
    """Vertices of a regular polygon (or, with `inner`, a star) around the origin; y grows downwards."""
    count = 2 * n if inner else n
    points = []
    for i in range(count):
        r = inner * radius if inner and i % 2 else radius
        angle = math.radians(rotation_deg - 90 + 360 * i / count)
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return points


def _cross(radius: float, width: float, rotation_deg: float) -> list[tuple[float, float]]:
    """A filled plus (rotation 0) or x (45) of arm half-width `width`."""
    r, w = radius, width
    arms = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)]
    angle = math.radians(rotation_deg)
    return [(x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)) for x, y in arms]


# matplotlib marker code -> vertices of its shape at radius r (y downwards, as in SVG).
_SHAPES = {
    "s": lambda r: _polygon(4, r * 1.25, 45), "D": lambda r: _polygon(4, r * 1.2, 0),
    "d": lambda r: [(x * 0.6, y) for x, y in _polygon(4, r * 1.25, 0)],
    "^": lambda r: _polygon(3, r * 1.2, 0), "v": lambda r: _polygon(3, r * 1.2, 180),
    "<": lambda r: _polygon(3, r * 1.2, 270), ">": lambda r: _polygon(3, r * 1.2, 90),
    "p": lambda r: _polygon(5, r * 1.1, 0), "h": lambda r: _polygon(6, r * 1.1, 0),
    "8": lambda r: _polygon(8, r * 1.05, 22.5), "*": lambda r: _polygon(5, r * 1.6, 0, inner=0.45),
    "P": lambda r: _cross(r * 1.15, r * 0.4, 0), "X": lambda r: _cross(r * 1.25, r * 0.35, 45),
}
SVG_MARKERS = ("o", *_SHAPES)


def marker_shape(marker: str, x: float, y: float, radius: float = MARKER_RADIUS) -> str:
    """The SVG element (without closing) of a matplotlib marker code at (x, y): a circle or a polygon."""
    if marker not in _SHAPES:
        return f'<circle cx="{x}" cy="{y}" r="{radius}"'
    points = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in _SHAPES[marker](radius))
    return f'<polygon points="{points}"'


def _series(series: Series, frame: _Frame) -> list[str]:
    points = sorted(series.points, key=lambda p: p.x)
    parts = []
    if series.line and len(points) > 1:
        path = " ".join(f"{frame.px(p.x)},{frame.py(p.y)}" for p in points)
        dash = ' stroke-dasharray="2 3"' if series.hollow else ""
        parts.append(f'<polyline class="series" points="{path}" stroke="{series.colour}"{dash}/>')
    for p in points:
        tip = escape(p.tip)
        element = marker_shape(series.marker, frame.px(p.x), frame.py(p.y))
        tag = "circle" if element.startswith("<circle") else "polygon"
        fill = "white" if series.hollow else series.colour
        parts.append(f'{element} class="pt" fill="{fill}" stroke="{series.colour}" data-marker="{escape(series.marker)}" '
                     f'data-name="{escape(series.name)}" data-x="{p.x!r}" data-y="{p.y!r}" data-tip="{tip}">'
                     f'<title>{tip}</title></{tag}>')
    return parts


def _legend(entries: list[LegendEntry], frame: _Frame, height: int, per_row: int) -> list[str]:
    parts = []
    rows = math.ceil(len(entries) / per_row)
    for i, entry in enumerate(entries):
        x = frame.x0 + (i % per_row) * LEGEND_COLUMN
        y = height - (rows - i // per_row) * LEGEND_ROW + 4
        if entry.marker is None:
            sample = (f'<line x1="{x}" x2="{x + 12}" y1="{y - 3}" y2="{y - 3}" stroke="{entry.colour}" '
                      f'stroke-width="1.6" stroke-dasharray="{entry.dash or "none"}"/>')
        else:
            element = marker_shape(entry.marker, x + 6, y - 3, 4)
            tag = "circle" if element.startswith("<circle") else "polygon"
            sample = (f'{element} fill="{"white" if entry.hollow else entry.colour}" stroke="{entry.colour}" '
                      f'data-marker="{escape(entry.marker)}"></{tag}>')
        parts.append(f'<g class="legend-entry" data-name="{escape(entry.name)}">{sample}'
                     f'<text class="legend" x="{x + 16}" y="{y + 1}">{escape(entry.name[:LEGEND_CHARS])}</text></g>')
    return parts
