"""Result tables in the layout of the 2DQuant paper's Table 3.

One table per (model, scale). Rows: FP, bicubic, then the methods grouped by bit-width (widest first);
columns: each dataset's PSNR and SSIM. In each bit group the top value of a column is bold (markdown `**x**`,
LaTeX `\\textbf{x}`) only when it wins by bench.runner.winners' rule (a printed lead over the runner-up larger
than 0.05 dB PSNR / 0.0005 SSIM, or a significant Wilcoxon test where the tests were run); otherwise the legend
under the table lists the column as a tie.
Published numbers (a CSV with columns method,scale,bits,dataset,psnr,ssim) can be shown as reference rows
under the measured ones, or as delta columns (measured minus published).
Datasets evaluated on a subset are labelled with their image count, e.g. "Urban100 (10/100)".
PSNR prints 2 decimals and SSIM 4 (METRICS); `digits` asks for more where methods differ by less (PSNR 3 decimals:
the SwinIR-light reference tables), and the bold rule then reads the values at that precision, its margins unchanged.

Under each table, when the records carry measured deployment figures (bench.export.measure), a second table puts
them beside the cost model's theoretical ones, one row per FP/quantized variant (a calibration's figures are the
same for every dataset it is evaluated on): size (cost model) | size (measured, packed file) | speed-up (paper rule)
| FP32 and int8 latency and their ratio (measured, onnxruntime). A figure a record lacks prints "-", never 0.
"""
from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import ConfigError
from bench.runner.winners import MARGINS, decide, rule_text

DATASET_ORDER = ("Set5", "Set14", "B100", "Urban100", "Manga109")
METRICS = (("psnr", 2), ("ssim", 4))   # metric, decimals printed by default
MAX_DIGITS = 6   # float32 images: PSNR/SSIM beyond 6 decimals is noise
DISPLAY_NAMES = {"fp": "FP", "bicubic": "Bicubic", "minmax": "MinMax", "percentile": "Percentile",
                 "emmse": "EMMSE", "ptq4sr": "DBDC+Pac", "dobi": "DOBI", "2dquant": "2DQuant",
                 "noisyquant": "NoisyQuant", "condiquant": "CondiQuant", "adaround": "AdaRound", "brecq": "BRECQ",
                 "qdrop": "QDrop", "compsrt": "CompSRT", "ptq4vit": "PTQ4ViT", "repq-vit": "RepQ-ViT",
                 # the runtimes' own PTQ (matrix `peers:`, bench.export.peers)
                 "ort-minmax": "ORT MinMax (peer)", "ort-entropy": "ORT Entropy (peer)",
                 "ort-percentile": "ORT Percentile (peer)", "nncf": "NNCF (peer)"}
# Normalised method names of published tables that mean one of our registry names.
REFERENCE_ALIASES = {"dbdcpac": "ptq4sr", "ptq4sr": "ptq4sr", "minmax": "minmax", "percentile": "percentile",
                     "dobi": "dobi", "2dquant": "2dquant", "emmse": "emmse", "bicubic": "bicubic",
                     "noisyquant": "noisyquant", "condiquant": "condiquant", "ptq4vit": "ptq4vit", "repqvit": "repq-vit"}
REFERENCE_COLUMNS = ("method", "scale", "bits", "dataset", "psnr", "ssim")


@dataclass(frozen=True)
class DeploymentColumn:
    """One column of the deployment table: a record field, shown as value / divisor with `digits` decimals."""
    field: str
    header: str           # "{provider}" is replaced by the records' onnxruntime provider
    digits: int
    divisor: float = 1.0


BASE_DEPLOYMENT_COLUMNS = (
    DeploymentColumn("model_size_bytes", "size KB (cost model)", 1, 1000.0),
    DeploymentColumn("packed_size_bytes", "size KB (measured, packed)", 1, 1000.0),
    DeploymentColumn("speedup", "speed-up (paper rule)", 2),
)
ORT_DEPLOYMENT_COLUMNS = (
    DeploymentColumn("latency_ort_fp32_ms", "FP32 latency ms (measured, onnxruntime {provider})", 1),
    DeploymentColumn("latency_ort_int8_ms", "int8 latency ms (measured, onnxruntime {provider})", 1),
    DeploymentColumn("latency_ort_speedup", "speed-up (measured, onnxruntime {provider})", 2),
)
# OpenVINO: int8 beside FP32 and BF16 of the same runtime (bf16 is the float competitor of int8 on AMX CPUs)
OV_DEPLOYMENT_COLUMNS = (
    DeploymentColumn("latency_ov_fp32_ms", "FP32 ms (measured, OpenVINO)", 1),
    DeploymentColumn("latency_ov_bf16_ms", "BF16 ms (measured, OpenVINO)", 1),
    DeploymentColumn("latency_ov_int8_ms", "int8 ms (measured, OpenVINO)", 1),
    DeploymentColumn("latency_ov_speedup", "int8 speed-up vs FP32 (OpenVINO)", 2),
    DeploymentColumn("latency_ov_bf16_speedup", "int8 speed-up vs BF16 (OpenVINO)", 2),
)
# the int8 file itself (runs with a runtime in `latency` or `eval.runtimes`)
FILE_DEPLOYMENT_COLUMNS = (
    DeploymentColumn("onnx_size_bytes", "ONNX KB (measured)", 1, 1000.0),
    DeploymentColumn("openvino_ir_size_bytes", "OpenVINO IR KB (measured)", 1, 1000.0),
)
DEPLOYMENT_COLUMNS = BASE_DEPLOYMENT_COLUMNS + ORT_DEPLOYMENT_COLUMNS   # the columns of an onnxruntime-timed run
ALL_DEPLOYMENT_COLUMNS = DEPLOYMENT_COLUMNS + OV_DEPLOYMENT_COLUMNS + FILE_DEPLOYMENT_COLUMNS
# Fields only a deployment measurement writes: a table without any of them has nothing measured to show.
MEASURED_DEPLOYMENT_FIELDS = ("packed_size_bytes", "latency_ort_fp32_ms", "latency_ort_int8_ms", "latency_ov_int8_ms",
                              "psnr_openvino", "psnr_onnxruntime")
# With `eval: {runtimes: [...]}`: each dataset's PSNR of the fake quant beside the same int8 file in each runtime
RUNTIME_PSNR = (("psnr", "fake quant"), ("psnr_openvino", "OpenVINO"), ("psnr_onnxruntime", "onnxruntime"))
MISSING = "-"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def metric_digits(spec: str | dict[str, int] | None) -> dict[str, int]:
    """Decimals printed per metric: METRICS' defaults, overridden by `spec` ("psnr=3,ssim=4" as `bench table
    --digits` takes it, or a dict). At least the default (so a margin stays whole printed steps), at most MAX_DIGITS."""
    digits = dict(METRICS)
    if spec is None:
        return digits
    fix = f"write metric=decimals, comma-separated, e.g. --digits psnr=3,ssim=4 (metrics: {', '.join(digits)})"
    if isinstance(spec, str):
        pairs = [part.partition("=") for part in spec.split(",") if part.strip()]
        if not pairs or any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"bad --digits {spec!r}; {fix}")
        items = [(name.strip().lower(), value.strip()) for name, _, value in pairs]
    else:
        items = list(spec.items())
    for name, value in items:
        if name not in digits:
            raise ConfigError(f"bad --digits {spec!r}: unknown metric {name!r}; {fix}")
        try:
            count = int(value)
        except ValueError:
            raise ConfigError(f"bad --digits {spec!r}: {value!r} is not a whole number; {fix}") from None
        if not dict(METRICS)[name] <= count <= MAX_DIGITS:
            raise ConfigError(f"bad --digits {spec!r}: {name} prints {dict(METRICS)[name]} to {MAX_DIGITS} decimals "
                              f"(fewer than {dict(METRICS)[name]} cannot show its bold margin {MARGINS[name].text()}); "
                              f"e.g. --digits psnr=3,ssim=4")
        digits[name] = count
    return digits


# ------------------------------------------------------------------------------------------- reference

@dataclass(frozen=True)
class ReferenceRow:
    method: str          # our registry name it corresponds to (fp, bicubic, minmax, ...)
    name: str            # as printed in the source
    model: str | None    # normalised model name the FP row names ("swinirlight"), or None
    scale: int
    bits: int | None
    dataset: str
    psnr: float | None
    ssim: float | None


def load_reference(path: str | Path) -> list[ReferenceRow]:
    """Published numbers; unknown method names are kept under their own normalised name."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"reference file {path} does not exist; pass a CSV with columns "
                          f"{','.join(REFERENCE_COLUMNS)} to --reference")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(REFERENCE_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path}: missing columns {', '.join(sorted(missing))}; a reference CSV needs "
                              f"{','.join(REFERENCE_COLUMNS)}")
        raw_rows = list(reader)
    fp_models = {_norm(r["method"])[:-2] for r in raw_rows if _norm(r["method"]).endswith("fp")}
    model = next(iter(fp_models)) if len(fp_models) == 1 else None
    rows = []
    for number, r in enumerate(raw_rows, start=2):
        try:
            norm = _norm(r["method"])
            method = "fp" if norm.endswith("fp") else REFERENCE_ALIASES.get(norm, norm)
            rows.append(ReferenceRow(method, r["method"], model, int(r["scale"]),
                                     int(r["bits"]) if r["bits"] not in ("", None) else None, r["dataset"],
                                     float(r["psnr"]) if r["psnr"] else None,
                                     float(r["ssim"]) if r["ssim"] else None))
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: bad number ({exc}); scale and bits are integers, "
                              f"psnr and ssim decimals") from None
    return rows


# -------------------------------------------------------------------------------------------- the model

@dataclass
class Row:
    label: str
    bits: str                                   # "32", "-", "4" or "W4A8"
    group: str                                  # rows of one group compete for bold
    values: dict[tuple[str, str], float | None]  # (dataset, metric) -> value
    reference: bool = False
    method: str = ""
    bold: set[tuple[str, str]] = field(default_factory=set)
    deltas: dict[tuple[str, str], float | None] = field(default_factory=dict)
    tests: dict[str, object] = field(default_factory=dict)  # dataset -> bench.report.significance.Comparison
    deployment: dict[str, float | None] = field(default_factory=dict)  # DeploymentColumn.field -> value


@dataclass(frozen=True)
class Tie:
    """A column of a bit group where no method wins (bench.runner.winners): nothing bold there."""
    bits: str       # the rows' Bits text ("4", "W4A8")
    dataset: str    # column label
    metric: str
    lead: float     # top minus runner-up, as printed
    digits: int | None = None   # decimals printed (None: the metric's default)

    def text(self, headers: dict[str, str]) -> str:
        bits = f"{self.bits}-bit" if self.bits.isdigit() else self.bits
        return f"{bits} {headers.get(self.dataset, self.dataset)} {self.metric.upper()} " \
               f"(lead {MARGINS[self.metric].at(self.digits).text(self.lead)})"


@dataclass
class Table:
    model: str
    scale: int
    datasets: list[str]
    headers: dict[str, str]   # dataset -> header label ("Urban100 (10/100)")
    rows: list[Row]
    failed: list[str] = field(default_factory=list)
    delta: bool = False
    significance: bool = False   # rows carry Wilcoxon tests against the best of their bit group
    deployment: Deployment | None = None   # measured size/latency beside the cost model, when recorded
    contested: bool = False      # some bit group has two or more rows: bold is possible, its legend printed
    ties: list[Tie] = field(default_factory=list)
    digits: dict[str, int] = field(default_factory=lambda: dict(METRICS))   # metric -> decimals printed

    @property
    def title(self) -> str:
        return f"{self.model} x{self.scale}"


# How a matrix variant of a built-in method is named in tables and figures: its distinguishing parameter.
_PARAM_SUMMARIES = {("2dquant", "iters"): "{} DQC steps", ("ptq4sr", "iters"): "Pac {} iterations",
                    ("percentile", "p"): "p={}", ("dobi", "variant"): "{} variant", ("condiquant", "iters"): "{} DQC steps",
                    ("compsrt", "iters"): "{} DQC steps",
                    ("repq-vit", "variant"): "{} variant", ("noisyquant", "noise"): "{} noise",
                    **{(m, "iters"): "{} iterations per unit" for m in ("adaround", "brecq", "qdrop")}}


def display_names(records: list[dict]) -> dict[str, str]:
    """Label -> the name shown in tables and figures. Registry names get their display name (minmax ->
    MinMax); a matrix label of a built-in method (2dquant-tiny) becomes the method's display name with its
    distinguishing parameter ("2DQuant (10 DQC steps)"); anything else, or a name two labels would share,
    stays the label."""
    names: dict[str, str] = {}
    for r in records:
        label, method = r["label"], r["method"]
        if label in names:
            continue
        if label in DISPLAY_NAMES or method not in DISPLAY_NAMES:
            names[label] = DISPLAY_NAMES.get(label, label)
            continue
        params = r.get("method_params") or {}
        parts = [text.format(params[key]) for (m, key), text in _PARAM_SUMMARIES.items() if m == method and key in params]
        names[label] = f"{DISPLAY_NAMES[method]} ({', '.join(parts)})" if parts else label
    shown = list(names.values())
    return {label: (name if shown.count(name) == 1 else label) for label, name in names.items()}


def _bits_label(record: dict) -> tuple[str, str, tuple]:
    """(bits column text, group key, sort key: FP first, bicubic second, then widest bits first)."""
    w, a = record.get("w_bits"), record.get("a_bits")
    if record["method"] == "bicubic" or w is None:
        return "-", "bicubic", (1, 0, 0)
    if record["method"] == "fp":
        return "32", "fp", (0, 0, 0)
    mixed = (record.get("method_description") or {}).get("mixed")
    if mixed:  # per-layer bits within uniform W{w}A{a}'s budget: right after that uniform row
        text = mixed.get("tag", f"mixed{w}")
        return text, f"bits:{text}", (2, -w, -a, text)
    text = str(w) if w == a else f"W{w}A{a}"
    return text, f"bits:{text}", (2, -w, -a, "")


def _dataset_header(name: str, records: list[dict]) -> str:
    record = records[0]
    parts = []
    images, expected = record.get("images"), record.get("expected_images")
    if record.get("is_subset") and images and expected and images < expected:
        parts.append(f"{images}/{expected}")
    elif record.get("is_subset") and not record.get("crop"):
        parts.append("subset")
    if record.get("crop"):
        parts.append(f"crop {record['crop']}")
    return f"{name} ({', '.join(parts)})" if parts else name


def _dataset_order(labels: list[str], names: dict[str, str]) -> list[str]:
    """Paper order (Set5, Set14, B100, Urban100, Manga109), then other datasets alphabetically."""
    def rank(label: str) -> tuple:
        name = names[label]
        return (DATASET_ORDER.index(name) if name in DATASET_ORDER else len(DATASET_ORDER), name, label)
    return sorted(labels, key=rank)


def build_tables(records: list[dict], reference: list[ReferenceRow] | None = None,
                 delta: bool = False, significance: bool = False, deployment: bool = True,
                 digits: str | dict[str, int] | None = None) -> list[Table]:
    """Tables from the latest record of each cell (errors listed under the table, not as rows); with
    `deployment`, each table whose records hold measured deployment figures carries its Deployment table;
    `digits`: decimals per metric (metric_digits), which the bold rule reads the values at."""
    shown_digits = metric_digits(digits)
    tables = []
    for model, scale in sorted({(r["model"], r["scale"]) for r in records}):
        mine = [r for r in records if r["model"] == model and r["scale"] == scale]
        ok = [r for r in mine if r.get("status") == "ok"]
        failed = [f"{r['key']}: {r.get('error')}" for r in mine if r.get("status") != "ok"]
        labels = sorted({r.get("dataset_label") or r["dataset"] for r in ok})
        names = {label: next(r["dataset"] for r in ok if (r.get("dataset_label") or r["dataset"]) == label)
                 for label in labels}
        columns = _dataset_order(labels, names)
        headers = {c: _dataset_header(names[c], [r for r in ok if (r.get("dataset_label") or r["dataset"]) == c])
                   for c in columns}
        rows = _measured_rows(ok, columns)
        refs = _applicable_reference(reference or [], model, scale)
        if refs and delta:
            _add_deltas(rows, refs, names)
        elif refs:
            rows = _interleave_reference(rows, refs, names, columns)
        table = Table(model, scale, columns, headers, rows, failed, delta and bool(refs), digits=shown_digits)
        if significance:  # before the bold: a significant test can decide a PSNR column
            _attach_tests(table, ok)
        table.contested, table.ties = _mark_bold(rows, columns, significance, shown_digits)
        if deployment:
            table.deployment = build_deployment(ok, rows, columns, headers, shown_digits["psnr"])
        tables.append(table)
    return tables


def _measured_rows(records: list[dict], columns: list[str]) -> list[Row]:
    by_row: dict[tuple, Row] = {}
    order: dict[tuple, tuple] = {}
    shown = display_names(records)
    for index, r in enumerate(records):
        bits, group, sort_key = _bits_label(r)
        key = (r["label"], bits)
        if key not in by_row:
            name = shown[r["label"]]
            by_row[key] = Row(name, bits, group, {}, method=r["method"])
            order[key] = sort_key + (bool(r.get("peer")), index)   # the runtimes' own PTQ after the methods
        dataset = r.get("dataset_label") or r["dataset"]
        for metric, _ in METRICS:
            by_row[key].values[(dataset, metric)] = r.get(metric)
        for column in ALL_DEPLOYMENT_COLUMNS:  # the first record of the row that has the figure
            if by_row[key].deployment.get(column.field) is None:
                by_row[key].deployment[column.field] = r.get(column.field)
        for name, _ in RUNTIME_PSNR:  # a peer has no fake quant: its `psnr` is its runtime's
            own = name != "psnr" or (not r.get("peer") and r["method"] != "bicubic")
            by_row[key].deployment[_runtime_field(dataset, name)] = r.get(name) if own else None
    return [by_row[k] for k in sorted(by_row, key=lambda k: order[k])]


# ------------------------------------------------------------------------------------------- deployment

@dataclass
class Deployment:
    """The deployment table of one (model, scale): rows of the Table 3 that have a figure, and its legend."""
    rows: list[Row]
    provider: str
    notes: list[str]
    columns: tuple[DeploymentColumn, ...] = DEPLOYMENT_COLUMNS

    def headers(self) -> list[str]:
        return [c.header.format(provider=self.provider) for c in self.columns]

    def cells(self, row: Row, missing: str = MISSING) -> list[str]:
        return [_fmt(None if row.deployment.get(c.field) is None else row.deployment[c.field] / c.divisor,
                     c.digits, missing) for c in self.columns]


def _runtime_field(dataset: str, name: str) -> str:
    return f"{dataset}|{name}"


def _runtime_psnr_columns(records: list[dict], datasets: list[str], headers: dict[str, str],
                          digits: int) -> tuple[DeploymentColumn, ...]:
    """Per dataset: the fake quant's PSNR and that of each runtime the records evaluated the int8 file in."""
    present = [(name, shown) for name, shown in RUNTIME_PSNR[1:] if any(r.get(name) is not None for r in records)]
    if not present:
        return ()
    return tuple(DeploymentColumn(_runtime_field(d, name), f"{headers.get(d, d)} PSNR {shown}", digits)
                 for d in datasets for name, shown in [RUNTIME_PSNR[0], *present])


def build_deployment(records: list[dict], rows: list[Row], datasets: list[str] | None = None,
                     headers: dict[str, str] | None = None, psnr_digits: int = 2) -> Deployment | None:
    """None when no record holds a measured deployment figure (runs made before `bench.export.measure`)."""
    if not any(r.get(f) is not None for r in records for f in MEASURED_DEPLOYMENT_FIELDS):
        return None
    providers = sorted({r["latency_ort_provider"] for r in records if r.get("latency_ort_provider")})
    ort_timed = any(r.get("latency_ort_int8_ms") is not None for r in records)
    ov_timed = any(r.get("latency_ov_int8_ms") is not None for r in records)
    latency = ORT_DEPLOYMENT_COLUMNS if ort_timed or not ov_timed else ()
    latency += OV_DEPLOYMENT_COLUMNS if ov_timed else ()
    files = tuple(c for c in FILE_DEPLOYMENT_COLUMNS if any(r.get(c.field) is not None for r in records))
    psnr = _runtime_psnr_columns(records, datasets or [], headers or {}, psnr_digits)
    columns = psnr + BASE_DEPLOYMENT_COLUMNS + files + latency
    # rows with a measured figure; the FP row also for its PSNR beside the runtimes' (bicubic never)
    measured = {c.field for c in columns}
    shown = [row for row in rows if not row.reference and row.method != "bicubic"
             and any(row.deployment.get(f) is not None for f in measured)]
    return Deployment(shown, "/".join(providers) or "cpu", _deployment_notes(records), columns)


def _deployment_notes(records: list[dict]) -> list[str]:
    """What the measured columns are, from the records' own fields; and why a figure is missing."""
    notes = ["size (cost model): bench.cost, weights packed at their bit-width + FP32 rest + quantizer bounds; "
             "size (measured, packed): the `bench export --format packed` file, safetensors header included"]
    headers = sorted({f"{r['packed_header_bytes'] / 1000:.1f}" for r in records if r.get("packed_header_bytes")},
                     key=float)
    if headers:
        notes[0] += f" ({headers[0]}" + (f"-{headers[-1]}" if len(headers) > 1 else "") + " KB of it)"
    timed = [r for r in records if r.get("latency_ort_int8_ms") is not None]
    if timed:
        facts = sorted({(r.get("latency_ort_runs"), r.get("latency_ort_lr_size"), r.get("latency_ort_threads"))
                        for r in timed}, key=str)
        described = "; ".join(
            (f"median of {runs} interleaved runs" if runs else "median of interleaved runs")
            + (f", LR {size}x{size}" if size else "") + (f", {threads} thread(s)" if threads else "")
            for runs, size, threads in facts)
        notes.append(f"latency: FP32 and int8 QDQ exports in one onnxruntime process ({described}); "
                     f"speed-up (measured) = FP32 / int8 latency")
    ov_timed = [r for r in records if r.get("latency_ov_int8_ms") is not None]
    if ov_timed:
        facts = sorted({(r.get("latency_ov_runs"), r.get("latency_ov_lr_size"), r.get("latency_ov_threads"),
                         r.get("latency_ov_bf16_executed")) for r in ov_timed}, key=str)
        described = "; ".join(f"median of {runs} interleaved runs, LR {size}x{size}, {threads} thread(s), BF16 "
                              f"executed as {executed}" for runs, size, threads, executed in facts)
        notes.append(f"latency: FP32, BF16 (the FP32 graph with the bf16 precision hint) and the int8 QDQ export in "
                     f"one OpenVINO CPU process ({described}); speed-up = FP32 (or BF16) / int8 latency")
    if not timed and not ov_timed:
        if any(r.get("a_bits") == 8 for r in records if r.get("method") not in ("fp", "bicubic")):
            notes.append("latency: not measured in an integer runtime (add `latency: {runtime: onnxruntime}` or "
                         "`{runtime: openvino}` to the matrix)")
        else:  # the ONNX QDQ export writes uint8 activations
            notes.append("latency: not measurable in onnxruntime here: the ONNX export needs 8-bit activations")
    skipped = {_row_note(r, r[k]) if r.get("peer") else r[k]
               for r in records for k in ("latency_ort_note", "latency_ov_note") if r.get(k)}
    skipped |= {r["deployment_note"] for r in records if r.get("deployment_note")}
    notes += [f"not measured: {text}" for text in sorted(skipped)]
    unevaluated = {_row_note(r, r["runtime_eval_note"]) for r in records if r.get("runtime_eval_note")}
    notes += [f"not evaluated in a runtime: {text}" for text in sorted(unevaluated)]
    return notes


def _row_note(record: dict, text: str) -> str:
    """A note about one row's file (a peer's, or a runtime that could not run it), naming the row."""
    return f"{record['label']} {_bits_label(record)[0]}: {text}"


def _applicable_reference(reference: list[ReferenceRow], model: str, scale: int) -> list[ReferenceRow]:
    # A reference whose FP row names a model (e.g. "SwinIR-light FP") applies to that model only.
    return [r for r in reference if r.scale == scale and (r.model is None or r.model == _norm(model))]


def _reference_bits(row: Row) -> int | None:
    if row.group == "bicubic":
        return None
    return 32 if row.group == "fp" else (int(row.bits) if row.bits.isdigit() else None)


def _reference_values(refs: list[ReferenceRow], method: str, bits: int | None,
                      names: dict[str, str]) -> tuple[str, dict] | None:
    matched = [r for r in refs if r.method == method and (r.bits == bits or method == "bicubic")]
    if not matched:
        return None
    values = {}
    for label, name in names.items():
        hit = next((r for r in matched if r.dataset == name), None)
        for metric, _ in METRICS:
            values[(label, metric)] = getattr(hit, metric) if hit else None
    if all(v is None for v in values.values()):
        return None  # the reference has none of this table's datasets: no empty row
    return matched[0].name, values


def _interleave_reference(rows: list[Row], refs: list[ReferenceRow], names: dict[str, str],
                          columns: list[str]) -> list[Row]:
    """Each measured method is followed by the published row of the same method and bits."""
    out: list[Row] = []
    for i, row in enumerate(rows):
        out.append(row)
        next_same = i + 1 < len(rows) and rows[i + 1].method == row.method and rows[i + 1].group == row.group
        found = None if next_same else _reference_values(refs, row.method, _reference_bits(row), names)
        if found:
            name, values = found
            out.append(Row(f"{name} (paper)", row.bits, row.group, values, reference=True, method=row.method))
    return out


def _add_deltas(rows: list[Row], refs: list[ReferenceRow], names: dict[str, str]) -> None:
    for row in rows:
        found = _reference_values(refs, row.method, _reference_bits(row), names)
        if not found:
            continue
        for key, published in found[1].items():
            measured = row.values.get(key)
            row.deltas[key] = None if measured is None or published is None else measured - published


def _mark_bold(rows: list[Row], columns: list[str], significance: bool,
               digits: dict[str, int]) -> tuple[bool, list[Tie]]:
    """Bold the winner of each column of each bit group (bench.runner.winners), read at the printed `digits`;
    (contested, the ties)."""
    from bench.report.significance import top_differs_from_all
    groups: dict[str, list[Row]] = {}
    for row in rows:
        if not row.reference:
            groups.setdefault(row.group, []).append(row)
    contested, ties = False, []
    for members in groups.values():
        if len(members) < 2:
            continue  # a lone row (FP, bicubic) has nothing to beat
        contested = True
        for dataset in columns:
            for metric, _ in METRICS:
                values = [_round(r.values.get((dataset, metric)), digits[metric]) for r in members]
                tested = [r.tests.get(dataset) for r, v in zip(members, values) if v is not None]
                verdict = decide(values, metric, significance and metric == "psnr" and top_differs_from_all(tested),
                                 digits[metric])
                if verdict.winner is not None:
                    members[verdict.winner].bold.add((dataset, metric))
                elif verdict.tie:
                    ties.append(Tie(members[0].bits, dataset, metric, verdict.lead, digits[metric]))
    return contested, ties


def bold_note(table: Table) -> str:
    """The legend of bold under a table: the rule, then the columns where it found a tie."""
    if not table.contested:
        return ""
    ties = "; ".join(tie.text(table.headers) for tie in table.ties)
    return rule_text(table.significance) + (f"\nTie: {ties}." if ties else "")


def _attach_tests(table: Table, records: list[dict]) -> None:
    """Each measured quantized row gets, per dataset, its paired Wilcoxon test against its group's top."""
    from bench.report.significance import compare_to_best
    table.significance = True
    shown = display_names(records)
    tests = {(c.dataset, shown.get(c.label, c.label), c.bits): c for c in compare_to_best(records)}
    for row in table.rows:
        for dataset in table.datasets:
            found = None if row.reference else tests.get((dataset, row.label, row.bits))
            if found is not None:
                row.tests[dataset] = found


def significance_note(table: Table) -> str:
    """The legend of the significance marker, and the datasets where the test does not apply."""
    from bench.report.significance import ALPHA, MARKER, MIN_IMAGES, not_applicable_datasets
    note = (f"{MARKER}: PSNR differs from the top of its bit group, the highest mean PSNR (paired Wilcoxon "
            f"signed-rank test on per-image PSNR, p < {ALPHA}).")
    too_few = not_applicable_datasets(c for row in table.rows for c in row.tests.values())
    if too_few:
        listed = ", ".join(f"{table.headers[d]} ({n} images)" for d, n in too_few.items())
        note += f" Not applicable (fewer than {MIN_IMAGES} paired images): {listed}."
    return note


def _significance_mark(row: Row, dataset: str, metric: str) -> str:
    from bench.report.significance import MARKER
    test = row.tests.get(dataset)
    return MARKER if metric == "psnr" and test is not None and test.significant else ""


def _round(value, digits: int) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), digits) + 0.0  # + 0.0 turns -0.0 into 0.0, so deltas never print "-0.00"


# ------------------------------------------------------------------------------------------- rendering

def _fmt(value, digits: int, missing: str = "–") -> str:
    rounded = _round(value, digits)
    return missing if rounded is None else f"{rounded:.{digits}f}"


def _fmt_delta(value, digits: int) -> str:
    rounded = _round(value, digits)
    return "" if rounded is None else f"{rounded:+.{digits}f}"


def _cells(table: Table, row: Row, bold, missing: str = "–", marks: bool = True) -> list[str]:
    cells = []
    for dataset in table.datasets:
        for metric, _ in METRICS:
            digits = table.digits[metric]
            text = _fmt(row.values.get((dataset, metric)), digits, missing)
            cells.append((bold(text) if (dataset, metric) in row.bold else text)
                         + (_significance_mark(row, dataset, metric) if marks else ""))
            if table.delta:
                cells.append(_fmt_delta(row.deltas.get((dataset, metric)), digits))
    return cells


def _metric_headers(table: Table, dataset: str, style: str = "flat") -> list[str]:
    names = []
    for metric, _ in METRICS:
        names.append(metric.upper() if style == "sub" else f"{table.headers[dataset]} {metric.upper()}")
        if table.delta:
            names.append(f"Δ{metric.upper()}" if style == "sub" else f"{table.headers[dataset]} Δ{metric.upper()}")
    return names


def render_markdown(tables: list[Table]) -> str:
    from tabulate import tabulate
    parts = []
    for table in tables:
        headers = ["Method", "Bits"] + [h for d in table.datasets for h in _metric_headers(table, d)]
        body = [[("*" + row.label + "*") if row.reference else row.label, row.bits]
                + _cells(table, row, lambda t: f"**{t}**") for row in table.rows]
        parts.append(f"### {table.title}\n\n" + tabulate(body, headers=headers, tablefmt="github",
                                                         disable_numparse=True))
        parts += [bold_note(table)] if table.contested else []
        parts += [_failed_note(table)] if table.failed else []
        parts += [significance_note(table)] if table.significance else []
        parts += [_markdown_deployment(table)] if table.deployment else []
    return "\n\n".join(parts) + "\n"


def _markdown_deployment(table: Table) -> str:
    from tabulate import tabulate
    deployment = table.deployment
    body = [[row.label, row.bits] + deployment.cells(row) for row in deployment.rows]
    text = tabulate(body, headers=["Method", "Bits"] + deployment.headers(), tablefmt="github", disable_numparse=True)
    return (f"#### {table.title}: size and latency, cost model beside measured\n\n{text}\n\n"
            + "\n".join(f"- {note}" for note in deployment.notes))


def _failed_note(table: Table) -> str:
    return "Failed cells (see records.jsonl):\n" + "\n".join(f"- {line}" for line in table.failed)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "†": r"$^\dagger$", "–": "--", "Δ": r"$\Delta$", "<": r"$<$", ">": r"$>$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def latex_caption(table: Table) -> str:
    return (f"{table.model} x{table.scale}: PSNR (dB) / SSIM on the Y channel, FP and bicubic, then each "
            f"bit-width. " + rule_text(table.significance))


def latex_label(table: Table) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9]+", "-", f"{table.model}-x{table.scale}").strip("-")


def render_latex(tables: list[Table]) -> str:
    parts = []
    for table in tables:
        per_dataset = len(METRICS) * (2 if table.delta else 1)
        lines = [f"% {table.title}; needs \\usepackage{{booktabs}}", r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{latex_escape(latex_caption(table))}}}", rf"\label{{{latex_label(table)}}}",
                 r"\begin{tabular}{ll" + "c" * per_dataset * len(table.datasets) + "}",
                 r"\toprule",
                 "Method & Bits & " + " & ".join(rf"\multicolumn{{{per_dataset}}}{{c}}{{{latex_escape(table.headers[d])}}}"
                                                 for d in table.datasets) + r" \\",
                 " & & " + " & ".join(latex_escape(h) for d in table.datasets
                                      for h in _metric_headers(table, d, "sub")) + r" \\",
                 r"\midrule"]
        previous_group = None
        for row in table.rows:
            if previous_group is not None and row.group != previous_group:
                lines.append(r"\midrule")
            previous_group = row.group
            label = latex_escape(row.label)
            label = rf"\textit{{{label}}}" if row.reference else label
            cells = [latex_escape(c) for c in _cells(table, row, lambda t: f"\x00{t}\x01")]
            cells = [c.replace("\x00", r"\textbf{").replace("\x01", "}") for c in cells]
            lines.append(" & ".join([label, latex_escape(row.bits)] + cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        lines += [f"% Tie: {latex_escape(tie.text(table.headers))}" for tie in table.ties]
        lines += [f"% {latex_escape(significance_note(table))}"] if table.significance else []
        lines.append(r"\end{table}")
        parts.append("\n".join(lines))
        if table.deployment:
            parts.append(_latex_deployment(table))
    return "\n\n".join(parts) + "\n"


def _latex_deployment(table: Table) -> str:
    deployment = table.deployment
    caption = f"{table.title}: model size and latency, the cost model beside measured figures"
    lines = [f"% {table.title}, deployment; needs \\usepackage{{booktabs}}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{latex_escape(caption)}}}", rf"\label{{{latex_label(table)}-deployment}}",
             r"\begin{tabular}{ll" + "r" * len(deployment.columns) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in ["Method", "Bits"] + deployment.headers()) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in [row.label, row.bits] + deployment.cells(row)) + r" \\"
              for row in deployment.rows]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {latex_escape(note)}" for note in deployment.notes]
    return "\n".join(lines + [r"\end{table}"])


def render_csv(tables: list[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for i, table in enumerate(tables):
        headers = ["model", "scale", "method", "bits", "reference"] + \
                  [h for d in table.datasets for h in _metric_headers(table, d)]
        headers += [f"{table.headers[d]} Wilcoxon p" for d in table.datasets] if table.significance else []
        if i:
            writer.writerow([])
        writer.writerow(headers)
        for row in table.rows:
            p_values = [row.tests[d].p_text() if d in row.tests else "" for d in table.datasets]
            writer.writerow([table.model, table.scale, row.label, row.bits, int(row.reference)]
                            + _cells(table, row, lambda t: t, missing="", marks=False)
                            + (p_values if table.significance else []))
        if table.deployment:
            # A block of its own (like each model's table): empty cells, as in the block above, read as NaN.
            writer.writerow([])
            writer.writerow(["model", "scale", "method", "bits"] + table.deployment.headers())
            for row in table.deployment.rows:
                writer.writerow([table.model, table.scale, row.label, row.bits] + table.deployment.cells(row, ""))
    return buffer.getvalue()


RENDERERS = {"md": render_markdown, "latex": render_latex, "csv": render_csv}


def render(tables: list[Table], fmt: str) -> str:
    if fmt not in RENDERERS:
        raise ConfigError(f"unknown table format {fmt!r}; use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](tables)


def render_run(run: str | Path, fmt: str = "md", reference: list[ReferenceRow] | None = None, delta: bool = False,
               significance: bool = False, deployment: bool = True, digits: str | dict[str, int] | None = None) -> str:
    """The tables of a run folder (the latest record of each cell): what `bench table` prints. With
    `deployment=False` and the other defaults, the main table that `bench run` prints when it ends."""
    from bench.runner.records import RECORDS_FILE, latest_by_key, read_records
    records = list(latest_by_key(read_records(Path(run) / RECORDS_FILE)).values())
    return render(build_tables(records, reference, delta, significance, deployment, digits), fmt)
