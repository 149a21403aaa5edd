"""`bench report`: one self-contained HTML page for one or more runs.

The page holds the Table 3 layout (sortable, best per bit group in bold, Wilcoxon markers), the significance
tests, PSNR-vs-bits and PSNR-vs-size charts with hover values, per-image PSNR/SSIM tables, a visual crop
comparison with a before/after slider, and the provenance of every record. Everything is inline: CSS, the
small script of bench/report/assets, charts as SVG (bench.report.svg says why not plotly), crops as PNG data
URIs. It loads nothing, so it opens offline from a file, a mail attachment or an artifact store.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from bench.report import svg
from bench.report.crops import CropRequest, CropView, build_crop_view
from bench.report.significance import MARKER, Comparison
from bench.runner import pareto
from bench.runner.records import latest_by_key, read_records
from bench.runner.rundir import RunDir
from bench.runner.style import MIN_PSNR_SPAN_DB, TIE_DB, Styles, is_quantized, psnr_limits, skipped_charts, tie_note
from bench.runner.tables import (
    DISPLAY_NAMES,
    METRICS,
    Table,
    bold_note,
    build_tables,
    display_names,
    render,
    significance_note,
)
from bench.runner.tables import _fmt as format_value

ASSETS = Path(__file__).with_name("assets")
# Field names under which a record may hold a measured (exported, packed) model size beside the cost model's.
MEASURED_SIZE_FIELDS = ("packed_size_bytes", "measured_size_bytes")
BASELINES = ("fp", "bicubic")
# The page may load nothing: images only from data: URIs, styles and scripts only inline. A browser blocks (and
# the page's error box reports) any other load, so "works offline" is enforced, not just intended.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")


@dataclass
class RunRecords:
    run: RunDir
    records: list[dict]            # latest record per cell
    meta: dict = field(default_factory=dict)
    calibration: dict | None = None


def load_runs(runs: Iterable[RunDir]) -> list[RunRecords]:
    """Latest records of each run; a cell present in several runs is labelled with its run name."""
    loaded = [RunRecords(run, list(latest_by_key(read_records(run.records)).values()), run.read_meta(),
                         _matrix_calibration(run)) for run in runs]
    for item in loaded:
        for record in item.records:
            record.setdefault("run", item.run.name)
    if len(loaded) > 1:
        # A cell in several runs is "<its display name> [<run>]": the name the tables give it, then its run.
        shown = {id(item): display_names(item.records) for item in loaded}
        seen: dict[str, int] = {}
        for item in loaded:
            for record in item.records:
                seen[record["key"]] = seen.get(record["key"], 0) + 1
        for item in loaded:
            for record in item.records:
                if seen[record["key"]] > 1:
                    record["label"] = f"{shown[id(item)][record['label']]} [{item.run.name}]"
    return loaded


def _matrix_calibration(run: RunDir) -> dict | None:
    """The `calibration:` block of the matrix the run last used (run/matrix.yaml), or None."""
    import yaml
    if not run.matrix_copy.is_file():
        return None
    try:
        matrix = yaml.safe_load(run.matrix_copy.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None
    calibration = matrix.get("calibration") if isinstance(matrix, dict) else None
    return calibration if isinstance(calibration, dict) else None


# ----------------------------------------------------------------------------------------------- helpers

def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _ds(record: dict) -> str:
    return record.get("dataset_label") or record["dataset"]


def _name(record: dict) -> str:
    """The name `bench table` shows (set by build_report from tables.display_names)."""
    return record.get("_shown") or DISPLAY_NAMES.get(record["label"], record["label"])


def _bits(record: dict) -> str:
    if record["method"] == "bicubic" or record.get("w_bits") is None:
        return "-"
    if record["method"] == "fp":
        return "FP32"
    w, a = record["w_bits"], record.get("a_bits")
    return pareto.mixed_tag(record) or f"W{w}A{a}"  # a mixed record's w/a bits are its budget's


def _num(value) -> str:
    """data-v attribute of a numeric cell (sort key); empty when missing."""
    return "" if value is None else repr(float(value))


def _td(text: str, value=None, classes: str = "", extra: str = "") -> str:
    cls = f' class="{classes}"' if classes else ""
    data = f' data-v="{_num(value)}"' if value is not None else ""
    return f"<td{cls}{data}{extra}>{text}</td>"


def _th(text: str, index: int | None = None, numeric: bool = False, classes: str = "") -> str:
    sort = f' data-sort="{index}"' if index is not None else ""
    kind = ' data-type="num"' if numeric else ""
    cls = f' class="{classes}"' if classes else ""
    return f"<th{cls}{sort}{kind}>{escape(text)}</th>"


def _group_by(records: Iterable[dict], key) -> dict:
    """Records by key(record), in first-seen order: one pass instead of a filter per group (5,000-record runs)."""
    groups: dict = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return groups


def _anchor(*parts) -> str:
    return "-".join(str(p) for p in parts).replace(" ", "_").replace("/", "_").replace("[", "").replace("]", "")


# -------------------------------------------------------------------------------------------- Table 3

def _table3(table: Table) -> str:
    headers = [_th("Method", 0, classes="text"), _th("Bits", 1, classes="text")]
    index = 2
    for dataset in table.datasets:
        for metric, _ in METRICS:
            headers.append(_th(f"{table.headers[dataset]} {metric.upper()}", index, numeric=True))
            index += 1
    body, previous = [], None
    for row in table.rows:
        cells = [_td(escape(row.label), classes="text" + (" reference" if row.reference else "")),
                 _td(escape(row.bits), classes="text")]
        for dataset in table.datasets:
            test = row.tests.get(dataset)
            for metric, digits in METRICS:
                value = row.values.get((dataset, metric))
                text = escape(format_value(value, digits))
                tip = ""
                if metric == "psnr" and test is not None:
                    tip = f' data-tip="{escape(test.describe())}" title="{escape(test.describe())}"'
                    if test.significant:
                        text += f'<span class="sig">{MARKER}</span>'
                classes = ("best" if (dataset, metric) in row.bold else "") + (" reference" if row.reference else "")
                cells.append(_td(text, value, classes.strip(),
                                 f' data-row="{escape(row.label)}|{escape(row.bits)}" data-col="{escape(dataset)}|{metric}"'
                                 + tip))
        group_start = ' class="group-start"' if previous is not None and row.group != previous else ""
        previous = row.group
        body.append(f"<tr{group_start}>{''.join(cells)}</tr>")
    note = f'<p class="note">{escape(significance_note(table))} {escape(bold_note(table))} Click a header to sort ' \
           f'(again to reverse, a third time for the table order).</p>'
    failed = ""
    if table.failed:
        failed = '<p class="note">Failed cells: ' + "; ".join(escape(f) for f in table.failed) + "</p>"
    return (f'<h3 id="{_anchor("table", table.model, table.scale)}">{escape(table.title)}</h3>'
            f'<div class="scroll"><table class="sortable table3"><thead><tr>{"".join(headers)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{note}{failed}')


def _deployment_table(table: Table) -> str:
    """The deployment table of `bench table` (bench.runner.tables.Deployment): the same cells, sortable."""
    deployment = table.deployment
    if deployment is None:
        return ""
    headers = [_th("Method", 0, classes="text"), _th("Bits", 1, classes="text")]
    headers += [_th(h, i, numeric=True) for i, h in enumerate(deployment.headers(), start=2)]
    body = []
    for row in deployment.rows:
        cells = [_td(escape(row.label), classes="text"), _td(escape(row.bits), classes="text")]
        cells += [_td(escape(text), row.deployment.get(column.field),
                      extra=f' data-row="{escape(row.label)}|{escape(row.bits)}" data-col="deployment|{column.field}"')
                  for column, text in zip(deployment.columns, deployment.cells(row))]
        body.append(f"<tr>{''.join(cells)}</tr>")
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in deployment.notes)
    return (f'<h4>{escape(table.title)}: size and latency, cost model beside measured</h4>'
            f'<div class="scroll"><table class="sortable deployment"><thead><tr>{"".join(headers)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{notes}')


def _significance_table(tables: list[Table], names: dict[str, str]) -> str:
    rows = []
    for table in tables:
        for row in table.rows:
            for dataset, test in row.tests.items():
                rows.append((table, row.label, test))
    if not rows:
        return '<p class="note">No quantized methods: nothing to test.</p>'
    headers = ["Model", "Scale", "Dataset", "Bits", "Method", "Top of group (mean PSNR)", "Images", "W statistic", "p",
               "Verdict"]
    head = "".join(_th(h, i, numeric=h in ("Scale", "Images", "W statistic", "p"),
                       classes="" if h in ("Scale", "Images", "W statistic", "p") else "text")
                   for i, h in enumerate(headers))
    body = []
    for table, label, test in rows:
        verdict = test.verdict()  # "best" only for a winner by bench.runner.winners, as the bold above
        best = names.get(test.best_label, test.best_label)
        body.append("<tr>" + "".join([
            _td(escape(table.model), classes="text"), _td(str(table.scale), table.scale),
            _td(escape(table.headers.get(test.dataset, test.dataset)), classes="text"), _td(escape(test.bits), classes="text"),
            _td(escape(label), classes="text"), _td(escape(best), classes="text"), _td(str(test.n), test.n),
            _td("" if test.statistic is None else f"{test.statistic:g}", test.statistic),
            _td(escape(test.p_text()), test.p_value), _td(escape(verdict), classes="text")]) + "</tr>")
    return (f'<div class="scroll"><table class="sortable significance"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _csv_link(tables: list[Table]) -> str:
    data = base64.b64encode(render(tables, "csv").encode("utf-8")).decode("ascii")
    return (f'<p><a download="table.csv" href="data:text/csv;base64,{data}">Download the tables as CSV</a> '
            f'(with a Wilcoxon p column per dataset).</p>')


# --------------------------------------------------------------------------------------------- charts

def _tip(record: dict, extra: str = "") -> str:
    lines = [f"{_name(record)} {_bits(record)}", f"{_ds(record)}: PSNR {format_value(record['psnr'], 2)} dB",
             f"SSIM {format_value(record.get('ssim'), 4)}"]
    return "\n".join(lines + ([extra] if extra else []))


def _bits_chart(records: list[dict], dataset: str, styles: Styles) -> str:
    mine = [r for r in records if r.get("psnr") is not None]
    quantized = [r for r in mine if is_quantized(r)]
    series = []
    for label in dict.fromkeys(r["label"] for r in quantized):
        style = styles.of(label)
        points = [svg.Point(r["w_bits"], r["psnr"], _tip(r)) for r in quantized if r["label"] == label]
        series.append(svg.Series(_name(next(r for r in mine if r["label"] == label)), points, style.colour, style.marker))
    hlines = [svg.HLine(_name(r), r["psnr"], _tip(r), "6 4" if r["method"] == "fp" else "2 3", styles.of(r["label"]).colour)
              for r in mine if not is_quantized(r)]
    ticks = sorted({r["w_bits"] for r in quantized})
    values = [r["psnr"] for r in mine]
    return svg.render_chart(svg.Chart(f"{dataset}: PSNR vs bits", "weight/activation bits", "PSNR (dB, Y)",
                                      series, hlines, x_ticks=ticks or None, y_range=psnr_limits(values),
                                      note=tie_note([r["psnr"] for r in quantized])))


def _measured_size(record: dict) -> int | None:
    return next((record[f] for f in MEASURED_SIZE_FIELDS if record.get(f)), None)


def _size_chart(records: list[dict], dataset: str, styles: Styles) -> str:
    """Filled markers: the cost model's size; hollow: the measured file. The legend names each method once and
    says what filled and hollow mean, as `bench plot`'s figure does."""
    mine = [r for r in records if r.get("psnr") is not None and r.get("model_size_bytes")]
    series, legend = [], []
    by_label = _group_by(mine, lambda r: r["label"])
    for label in sorted(by_label, key=lambda label: is_quantized(by_label[label][0])):  # FP first
        members = by_label[label]
        name, style = _name(members[0]), styles.of(label)
        legend.append(svg.LegendEntry(name, style.colour, style.marker))
        series.append(svg.Series(name, [svg.Point(r["model_size_bytes"] / 1e6, r["psnr"],
                                                  _tip(r, f"size {r['model_size_bytes'] / 1e6:.3f} MB (cost model)"))
                                        for r in members], style.colour, style.marker))
        measured = [r for r in members if _measured_size(r)]
        if measured:
            series.append(svg.Series(f"{name} (measured)", [svg.Point(
                _measured_size(r) / 1e6, r["psnr"], _tip(r, f"size {_measured_size(r) / 1e6:.3f} MB (measured file)"))
                for r in measured], style.colour, style.marker, hollow=True))
    if any(s.hollow for s in series):  # without a measured file every marker is the cost model's: no key needed
        legend += [svg.LegendEntry("filled: cost model size", "#696969", "o"),
                   svg.LegendEntry("hollow: measured packed file", "#696969", "o", hollow=True)]
    return svg.render_chart(svg.Chart(f"{dataset}: PSNR vs model size", "model size (MB)", "PSNR (dB, Y)", series,
                                      y_range=psnr_limits([r["psnr"] for r in mine]), legend=legend,
                                      note=tie_note([r["psnr"] for r in mine if is_quantized(r)])))


SHORT_KIND = {"cost model": "cost-model size", "measured, packed": "packed file"}  # chart titles fit the chart


def _pareto_chart(records: list[dict], dataset: str, styles: Styles, size_field: str, kind: str) -> str:
    """`bench plot`'s pareto figure for one dataset and size measure: filled uniform, hollow mixed, a line
    through each method's frontier (bench.runner.pareto). The frontier series comes first: the uniform and mixed
    markers are drawn over its own."""
    series, legend = [], []
    for label, points in pareto.trade_off_points(records, size_field).items():
        name, style = _name(points[0].record), styles.of(label)
        legend.append(svg.LegendEntry(name, style.colour, style.marker))

        def svg_points(chosen, name=name):
            return [svg.Point(p.size_bytes / 1e3, p.psnr, _tip(p.record, f"size {p.size_bytes / 1e3:.1f} KB ({kind})"))
                    for p in chosen]
        series.append(svg.Series(f"{name} frontier", svg_points(pareto.pareto_front(points)), style.colour,
                                 style.marker))
        for mixed in (False, True):
            chosen = [p for p in points if p.mixed is mixed]
            if chosen:
                series.append(svg.Series(name + (" (mixed)" if mixed else ""), svg_points(chosen), style.colour,
                                         style.marker, line=False, hollow=mixed))
    fp = [r for r in records if r["method"] == "fp" and r.get("psnr") is not None]
    hlines = [svg.HLine(_name(r), r["psnr"], _tip(r), "6 4", styles.of(r["label"]).colour) for r in fp]
    legend = [svg.LegendEntry(_name(r), styles.of(r["label"]).colour, None, dash="6 4") for r in fp[:1]] + legend
    legend += [svg.LegendEntry("filled: uniform bits", "#696969", "o"),
               svg.LegendEntry("hollow: mixed precision", "#696969", "o", hollow=True),
               svg.LegendEntry("line: Pareto frontier", "#696969", None)]
    values = [p.y for s in series for p in s.points] + [r["psnr"] for r in fp]
    return svg.render_chart(svg.Chart(f"{dataset}: trade-off, {SHORT_KIND.get(kind, kind)}", f"model size (KB, {kind})",
                                      "PSNR (dB, Y)", series, hlines, y_range=psnr_limits(values), legend=legend))


def _charts(records: list[dict]) -> str:
    """The charts `bench plot` draws, with the same rules: one colour and marker per method (bench.runner.style),
    a PSNR axis of at least MIN_PSNR_SPAN_DB, a note when methods tie, and no chart of a single x value."""
    parts = []
    ok = [r for r in records if r.get("status") == "ok"]
    styles = Styles(ok)
    groups = _group_by(ok, lambda r: (r["model"], r["scale"]))
    for model, scale in sorted(groups):
        mine = groups[(model, scale)]
        by_dataset = _group_by(pareto.uniform_only(mine), _ds)  # mixed records: the trade-off charts below
        has_measured = any(_measured_size(r) for r in mine)
        skipped = skipped_charts(pareto.uniform_only(mine), model, scale)
        charts = "".join(("" if "bits" in skipped else _bits_chart(by_dataset[d], d, styles))
                         + ("" if "size" in skipped else _size_chart(by_dataset[d], d, styles))
                         for d in sorted(by_dataset))
        if pareto.has_mixed(mine):
            mixed_by_dataset = _group_by(mine, _ds)
            charts += "".join(_pareto_chart(mixed_by_dataset[d], d, styles, f, kind)
                              for f, kind in pareto.size_kinds(mine) for d in sorted(mixed_by_dataset))
        parts.append(f'<h3>{escape(model)} x{scale}</h3>' + (f'<div class="charts">{charts}</div>' if charts else ""))
        notes = [f"{reason}; a chart needs two or more." for reason in skipped.values()]
        if "size" not in skipped:
            notes.append("Model size: the cost model (packed weights at their bit-width + FP rest + quantizer "
                         "parameters), filled markers" + ("; measured file sizes, hollow markers." if has_measured
                                                          else "; no measured file size is recorded in this run."))
        if pareto.has_mixed(mine):
            notes.append("Trade-off charts: filled markers uniform bits, hollow markers mixed precision (per-layer "
                         "bits within the size and BOPs of the uniform bit-width its tag names), a line through "
                         "each method's Pareto frontier.")
        if charts:
            notes.append(f"PSNR axes span at least {MIN_PSNR_SPAN_DB} dB; methods within {TIE_DB} dB are marked "
                         f"as not a ranking. Hover a point for its values.")
        parts.append("".join(f'<p class="note">{escape(note)}</p>' for note in notes))
    return "".join(parts) or '<p class="note">No successful cells: nothing to plot.</p>'


# ---------------------------------------------------------------------------------------- per image

def _per_image_tables(records: list[dict]) -> str:
    parts = []
    groups = _group_by((r for r in records if r.get("status") == "ok" and r.get("per_image")),
                       lambda r: (r["model"], r["scale"], _ds(r)))
    for model, scale, dataset in sorted(groups):
        cells = groups[(model, scale, dataset)]
        cells.sort(key=lambda r: (r["method"] != "fp", r["method"] != "bicubic", -(r.get("w_bits") or 0), _name(r)))
        names = list(dict.fromkeys(p["name"] for r in cells for p in r["per_image"]))
        scores = [{p["name"]: p for p in r["per_image"]} for r in cells]
        head = [_th("Image", 0, classes="text")]
        for i, r in enumerate(cells):
            head += [_th(f"{_name(r)} {_bits(r)} PSNR", 1 + 2 * i, numeric=True),
                     _th(f"{_name(r)} {_bits(r)} SSIM", 2 + 2 * i, numeric=True)]
        body = []
        for name in names:
            row = [_td(escape(name), classes="text")]
            for score in scores:
                entry = score.get(name, {})
                row += [_td(format_value(entry.get("psnr"), 2), entry.get("psnr")),
                        _td(format_value(entry.get("ssim"), 4), entry.get("ssim"))]
            body.append("<tr>" + "".join(row) + "</tr>")
        parts.append(f'<details><summary>{escape(model)} x{scale}, {escape(dataset)}: {len(names)} images, '
                     f'{len(cells)} cells</summary><div class="scroll"><table class="sortable per-image"><thead><tr>'
                     f'{"".join(head)}</tr></thead><tbody>{"".join(body)}</tbody></table></div></details>')
    return "".join(parts) or '<p class="note">No per-image values recorded.</p>'


# ------------------------------------------------------------------------------------------- visual

def _psnr_lines(psnr: str) -> str:
    """"crop 31.20 dB, image 35.41 dB" as two lines under a crop's name."""
    return f'<br><span class="psnr">{"<br>".join(map(escape, psnr.split(", ")))}</span>' if psnr else ""


def _visual(view: CropView | str | None) -> str:
    if view is None:
        return '<p class="note">Visual comparison skipped (--no-visual).</p>'
    if isinstance(view, str):
        return f'<p class="note">{escape(view)}</p>'
    figures = "".join(f'<figure><img src="{p.data_uri}" alt="{escape(p.caption)}" width="140"><figcaption>'
                      f'{escape(p.title)}{_psnr_lines(p.psnr)}</figcaption></figure>' for p in view.panels)
    # The selects name panels by index: the slider script takes the images from the figures above, so each PNG is
    # in the page once.
    last = len(view.panels) - 1
    left = "".join(f'<option value="{i}">{escape(p.caption)}</option>' for i, p in enumerate(view.panels))
    right = "".join(f'<option value="{i}"{" selected" if i == last else ""}>{escape(p.caption)}</option>'
                    for i, p in enumerate(view.panels))
    return (f'<p>{escape(view.caption)}</p><div class="crops" id="crops">{figures}</div>'
            f'<h3>Before / after</h3><div class="slider-controls">left <select id="slider-left">{left}</select> '
            f'right <select id="slider-right">{right}</select> '
            f'<input id="slider-range" type="range" min="0" max="100" value="50" aria-label="divider position"> '
            f'<span id="slider-names"></span></div>'
            f'<div class="slider" id="slider"><img class="before" width="384" alt="left">'
            f'<img class="after" width="384" alt="right"></div>')


# --------------------------------------------------------------------------------------- provenance

class _WeightsDigests:
    """Full sha256 of each weights file, hashed once per path (records name the file, not its digest)."""

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def __call__(self, record: dict) -> str:
        path = self._path(record)
        if path is None:
            return "–"
        if path not in self._cache:
            file = Path(path)
            if not file.is_file():
                self._cache[path] = "file not found now"
            else:
                digest = hashlib.sha256()
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(chunk)
                self._cache[path] = digest.hexdigest()
        return self._cache[path]

    @staticmethod
    def _path(record: dict) -> str | None:
        weights = record.get("weights")
        if weights in (None, "random"):
            return None
        if weights == "default":
            from models.fetch import find_default_weights
            found = find_default_weights(record["model"], record["scale"])
            return None if found is None else str(found.path)
        return str(weights)


def _calibration_text(record: dict, calibration: dict | None) -> str:
    if record["method"] in BASELINES:
        return "–"
    parts = []
    if calibration:
        parts.append(", ".join(f"{k}={v}" for k, v in calibration.items()))
    description = record.get("method_description") or {}
    params = description.get("params", record.get("method_params") or {})
    if params:
        parts.append("method " + json.dumps(params, sort_keys=True))
    if record.get("calib_seconds") is not None:
        parts.append(f"{record['calib_seconds']:.1f} s" + (" (cached)" if record.get("calib_cached") else ""))
    return "; ".join(parts) or "not recorded"


def _provenance(runs: list[RunRecords]) -> str:
    digests = _WeightsDigests()
    summary = []
    for item in runs:
        meta = item.meta
        summary.append(f"<li><b>{escape(item.run.name)}</b> ({escape(str(item.run.path))}): matrix "
                       f"{escape(str(meta.get('matrix_path', '?')))}, created {escape(str(meta.get('created', '?')))}, "
                       f"last started {escape(str(meta.get('last_started', '?')))}, commit "
                       f"{escape(str(meta.get('git_commit', '?')))}; calibration "
                       f"{escape(json.dumps(item.calibration) if item.calibration else 'not recorded')}</li>")
    headers = ["Run", "Cell", "Status", "Git commit", "torch", "Device", "Weights", "Weights sha256", "Seed",
               "Calibration", "Latency", "Timestamp"]
    head = "".join(_th(h, i, numeric=h == "Seed", classes="" if h == "Seed" else "text") for i, h in enumerate(headers))
    body = []
    for item in runs:
        for r in item.records:
            status = r.get("status", "?") + (f": {r.get('error')}" if r.get("error") else "")
            latency = "–" if r.get("latency_ms") is None else f"{r['latency_ms']:.1f} ms ({r.get('latency_kind')})"
            values = [item.run.name, r["key"], status, r.get("git_commit") or "–", r.get("torch_version") or "–",
                      r.get("device") or "–", r.get("weights") or "–", digests(r)]
            cells = [_td(escape(str(v)), classes="text") for v in values]
            cells.append(_td("" if r.get("seed") is None else str(r["seed"]), r.get("seed")))
            cells += [_td(escape(_calibration_text(r, item.calibration)), classes="text"),
                      _td(escape(latency), classes="text"), _td(escape(r.get("timestamp") or "–"), classes="text")]
            body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<ul>{''.join(summary)}</ul>"
            '<p class="note">Weights sha256 is computed now from the file the record names; calibration settings come '
            "from the run's matrix.yaml and the record's method description.</p>"
            f'<div class="scroll"><table class="sortable provenance"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


# ------------------------------------------------------------------------------------------------ page

@dataclass(frozen=True)
class ReportPage:
    html: str
    records: int
    tables: int
    comparisons: list[Comparison]


def build_report(runs: list[RunRecords], crop: CropView | str | None, generated: str = "") -> ReportPage:
    records = [r for item in runs for r in item.records]
    shown = display_names(records)
    for record in records:
        record["_shown"] = shown[record["label"]]
    tables = build_tables(records, significance=True)
    comparisons = [t for table in tables for row in table.rows for t in row.tests.values()]
    names = ", ".join(item.run.name for item in runs)
    ok = sum(1 for r in records if r.get("status") == "ok")
    sections = [
        ("tables", "Tables", "".join(_table3(t) + _deployment_table(t) for t in tables) + _csv_link(tables)
         if tables else '<p class="note">No records.</p>'),
        ("significance", "Significance", '<p class="note">Paired Wilcoxon signed-rank test (scipy.stats.wilcoxon, '
         'two-sided) on per-image PSNR, each method against the best mean PSNR of its dataset and bit-width.</p>'
         + _significance_table(tables, shown)),
        ("charts", "Charts", _charts(records)),
        ("per-image", "Per-image PSNR / SSIM", _per_image_tables(records)),
        ("visual", "Visual comparison", _visual(crop)),
        ("provenance", "Provenance", _provenance(runs)),
    ]
    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{escape(title)}</h2>{content}</section>' for key, title, content in sections)
    page = (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<title>bench report: {escape(names)}</title>'
        f"<style>{_asset('report.css')}</style><script>{_asset('errors.js')}</script></head><body>"
        f"<h1>sr-ptq-bench report: {escape(names)}</h1>"
        f'<p class="meta">{len(records)} cells ({ok} ok, {len(records) - ok} failed) in {len(runs)} run(s)'
        + (f", generated {escape(generated)}" if generated else "") + "</p>"
        '<div id="report-errors" hidden></div>'
        f"<nav>{nav}</nav>{body}"
        '<div id="tip"></div><p class="meta">Status: <span id="report-status">script not run</span>'
        '<span id="report-selftest"></span></p>'
        f"<script>{_asset('report.js')}</script></body></html>\n")
    return ReportPage(page, len(records), len(tables), comparisons)


def write_report(run_dirs: list[RunDir], out: Path, crop_request: CropRequest | None, generated: str = "") -> ReportPage:
    """Load the runs, build the page and write it atomically to `out`."""
    from bench.runner.rundir import write_atomic
    runs = load_runs(run_dirs)
    crop = None if crop_request is None else build_crop_view([(item.run, item.records) for item in runs], crop_request)
    page = build_report(runs, crop, generated)
    write_atomic(out, page.html.encode("utf-8"))
    return page
