"""Measured deployment figures in `bench table`, `bench plot` and `bench report`, beside the cost model's.

One tiny real run (FSRCNN x2, shipped weights, one 16x16 crop of the embedded sample set, MinMax at W8A8 and
W4A4, onnxruntime latency): a few seconds on one thread, no shared folder needed.
"""
from __future__ import annotations

import copy
import re

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")

from conftest import run_matrix_text  # noqa: E402

from bench.cli import main  # noqa: E402
from bench.runner.records import read_records  # noqa: E402
from bench.runner.tables import build_tables, render  # noqa: E402

MATRIX = """
name: deploy-tables
models:
  - {name: fsrcnn, scales: [2], weights: shipped}
datasets:
  - {name: sample, crop: 16, max_images: 1}
bits: [8, 4]
methods: [minmax]
baselines: [fp, bicubic]
calibration: {n: 2, patch: 32, seed: 0, train_dir: sample-train}
latency: {runs: 1, lr_size: 16, runtime: onnxruntime}
cost: {lr_size: 16}
"""
HEADERS = ["Method", "Bits", "size KB (cost model)", "size KB (measured, packed)", "speed-up (paper rule)",
           "ONNX KB (measured)", "OpenVINO IR KB (measured)", "FP32 latency ms (measured, onnxruntime cpu)",
           "int8 latency ms (measured, onnxruntime cpu)",
           "speed-up (measured, onnxruntime cpu)"]
# FSRCNN x2 (13,876 parameters, 13,528 of them quantized weights; first and last layers stay FP under `auto`):
# the cost model's sizes in bytes, and the packed files' safetensors headers (names, shapes, layout metadata).
COST_BYTES = {"FP": 55_504, "W8A8": 16_392, "W4A4": 13_128}
HEADER_BYTES = {"W8A8": 5_264, "W4A4": 5_264}  # safetensors pads its JSON header to 8 bytes


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    return run_matrix_text(tmp_path_factory.mktemp("deploy"), MATRIX)


@pytest.fixture(scope="module")
def records(run) -> dict[str, dict]:
    return {r["key"].split("/")[3]: r for r in read_records(run / "records.jsonl")}


def _md_tables(text: str) -> list[list[list[str]]]:
    """Each github table of a markdown text as rows of stripped cells (header row first)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|") and not line.startswith("|--"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif not line.startswith("|--") and current:
            tables.append(current)
            current = []
    return tables


def test_records_hold_the_measured_size_and_onnxruntime_latency(records):
    w8, w4, fp = records["W8A8"], records["W4A4"], records["FP"]
    for bits in ("W8A8", "W4A4"):
        r = records[bits]
        assert r["model_size_bytes"] == COST_BYTES[bits]
        assert r["packed_header_bytes"] == HEADER_BYTES[bits]
        assert r["packed_size_bytes"] == COST_BYTES[bits] + HEADER_BYTES[bits]  # tensors: exactly the cost model
    assert fp["model_size_bytes"] == COST_BYTES["FP"] and fp["packed_size_bytes"] is None
    assert (w8["latency_ort_provider"], w8["latency_ort_runs"], w8["latency_ort_lr_size"], w8["latency_ort_threads"]) \
        == ("cpu", 1, 16, 1)
    assert w8["latency_ort_speedup"] == w8["latency_ort_fp32_ms"] / w8["latency_ort_int8_ms"]
    assert w4["latency_ort_int8_ms"] is None and "4-bit activations" in w4["latency_ort_note"]


def test_markdown_table_puts_measured_columns_beside_the_cost_model(run, records, capsys):
    assert main(["table", "--run", str(run)]) == 0
    text = capsys.readouterr().out
    table3, deployment = _md_tables(text)
    assert [row[0] for row in table3[1:]] == ["FP", "Bicubic", "MinMax", "MinMax"]  # Table 3 as before
    assert "#### fsrcnn x2: size and latency, cost model beside measured" in text
    w8 = records["W8A8"]
    onnx_kb = f"{w8['onnx_size_bytes'] / 1000:.1f}"
    ir_kb = f"{w8['openvino_ir_size_bytes'] / 1000:.1f}" if w8.get("openvino_ir_size_bytes") else "-"
    assert deployment == [
        HEADERS,
        ["FP", "32", "55.5", "-", "1.00", "-", "-", "-", "-", "-"],               # bicubic has no figure: no row
        ["MinMax", "8", "16.4", "21.7", "4.00", onnx_kb, ir_kb, f"{w8['latency_ort_fp32_ms']:.1f}",
         f"{w8['latency_ort_int8_ms']:.1f}", f"{w8['latency_ort_speedup']:.2f}"],
        ["MinMax", "4", "13.1", "18.4", "5.27", "-", "-", "-", "-", "-"],       # W4A4: no uint8 activations in ONNX
    ]
    assert "safetensors header included (5.3 KB of it)" in text
    assert "(median of 1 interleaved runs, LR 16x16, 1 thread(s))" in text
    assert "- not measured: quantizer shrink.0.input_quant has 4-bit activations" in text

    assert main(["table", "--run", str(run), "--no-deployment"]) == 0
    plain = capsys.readouterr().out
    assert len(_md_tables(plain)) == 1 and "size KB" not in plain


def test_latex_and_csv_carry_the_same_columns(run, records):
    tables = build_tables(list(read_records(run / "records.jsonl")))
    latex = render(tables, "latex")
    assert r"\label{tab:fsrcnn-x2-deployment}" in latex and r"\begin{tabular}{llrrrrrrrr}" in latex
    assert r"MinMax & 4 & 13.1 & 18.4 & 5.27 & - & - & - & - & - \\" in latex
    assert r"FP & 32 & 55.5 & - & 1.00 & - & - & - & - & - \\" in latex
    lines = render(tables, "csv").splitlines()
    block = lines[lines.index("") + 1:]                                  # the block after the PSNR/SSIM rows
    assert block[0] == ('model,scale,method,bits,size KB (cost model),"size KB (measured, packed)",speed-up (paper '
                        'rule),ONNX KB (measured),OpenVINO IR KB (measured),"FP32 latency ms (measured, onnxruntime '
                        'cpu)","int8 latency ms (measured, onnxruntime '
                        'cpu)","speed-up (measured, onnxruntime cpu)"')
    assert block[1] == "fsrcnn,2,FP,32,55.5,,1.00,,,,,"                 # empty, as the CSV's missing PSNR: never 0
    assert block[3] == "fsrcnn,2,MinMax,4,13.1,18.4,5.27,,,,,"


def test_records_without_a_measurement_get_no_deployment_table(run):
    old = copy.deepcopy(read_records(run / "records.jsonl"))
    for r in old:  # as a run recorded before bench.export.measure
        for field in ("packed_size_bytes", "packed_header_bytes", "latency_ort_fp32_ms", "latency_ort_int8_ms",
                      "latency_ort_speedup", "latency_ort_note"):
            r.pop(field, None)
    (table,) = build_tables(old)
    assert table.deployment is None and "size KB" not in render([table], "md")


def test_the_latency_note_says_why_nothing_was_timed(run):
    records = copy.deepcopy(read_records(run / "records.jsonl"))
    for r in records:  # as a matrix with the default `latency: {runtime: torch}`
        for field in ("latency_ort_fp32_ms", "latency_ort_int8_ms", "latency_ort_speedup", "latency_ort_note"):
            r.pop(field, None)
    assert ("- latency: not measured in an integer runtime (add `latency: {runtime: onnxruntime}` or "
            "`{runtime: openvino}` to the matrix)") in render(build_tables(records), "md")
    w4a4_only = [r for r in records if r.get("a_bits") != 8]                 # the demo's case: W4A4 cells only
    assert "- latency: not measurable in onnxruntime here: the ONNX export needs 8-bit activations" \
        in render(build_tables(w4a4_only), "md")


def test_html_report_shows_the_deployment_cells_of_bench_table(run, records):
    from bench.report.html import RunRecords, build_report
    from bench.runner.rundir import RunDir

    html = build_report([RunRecords(RunDir(run), read_records(run / "records.jsonl"))], None).html
    section = re.search(r'<table class="sortable deployment">.*?</table>', html, re.S).group(0)

    def cell(row: str, field: str) -> str:
        return re.search(rf'data-row="{re.escape(row)}" data-col="deployment\|{field}"[^>]*>([^<]*)', section).group(1)

    assert (cell("MinMax|8", "model_size_bytes"), cell("MinMax|8", "packed_size_bytes")) == ("16.4", "21.7")
    assert cell("MinMax|8", "latency_ort_int8_ms") == f"{records['W8A8']['latency_ort_int8_ms']:.1f}"
    assert (cell("MinMax|4", "latency_ort_int8_ms"), cell("FP|32", "packed_size_bytes")) == ("-", "-")
    assert "int8 latency ms (measured, onnxruntime cpu)</th>" in section


def test_plots_draw_measured_sizes_and_onnxruntime_speedups(run, records, tmp_path):
    from bench.runner.plots import Styles, ort_variants, plot_run, size_series

    ok = [r for r in read_records(run / "records.jsonl") if r["status"] == "ok"]
    w8, w4 = records["W8A8"], records["W4A4"]
    assert size_series(ok, Styles(ok)) == [
        ("MinMax (cost model)", "minmax", "cost model", [(0.013128, w4["psnr"]), (0.016392, w8["psnr"])]),
        ("MinMax (measured, packed)", "minmax", "measured, packed", [(0.018392, w4["psnr"]), (0.021656, w8["psnr"])]),
    ]
    (variant,) = ort_variants(ok, Styles(ok))                                # W4A4 was not timed in onnxruntime
    assert (variant.name, variant.bits, variant.paper_speedup) == ("MinMax", "W8A8", 4.0)
    assert (variant.fp32_ms, variant.int8_ms) == (w8["latency_ort_fp32_ms"], w8["latency_ort_int8_ms"])
    names = sorted(p.name for p in plot_run(ok, tmp_path))
    assert "fsrcnn_x2_latency_onnxruntime.png" in names and "fsrcnn_x2_latency_onnxruntime.pdf" in names
    assert (tmp_path / "fsrcnn_x2_latency_onnxruntime.png").read_bytes().startswith(b"\x89PNG")


def test_openvino_timed_records_show_fp32_bf16_and_int8_columns_and_figure(run, tmp_path):
    # As `latency: {runtime: openvino}` writes them: the OpenVINO columns replace onnxruntime's, and the figure shows
    # FP32, BF16 and int8 with the speed-up over both.
    from bench.runner.plots import plot_run
    records = copy.deepcopy(read_records(run / "records.jsonl"))
    for r in records:
        if r.pop("latency_ort_int8_ms", None) is not None:
            r.update(latency_ov_fp32_ms=120.0, latency_ov_bf16_ms=60.0, latency_ov_int8_ms=40.0, latency_ov_speedup=3.0,
                     latency_ov_bf16_speedup=1.5, latency_ov_bf16_executed="bf16", latency_ov_threads=1,
                     latency_ov_runs=5, latency_ov_lr_size=128)
        for field in ("latency_ort_fp32_ms", "latency_ort_speedup", "onnx_size_bytes", "openvino_ir_size_bytes"):
            r.pop(field, None)
    (table,) = _md_tables(render(build_tables(records), "md"))[1:2]
    assert table[0][2:] == ["size KB (cost model)", "size KB (measured, packed)", "speed-up (paper rule)",
                            "FP32 ms (measured, OpenVINO)", "BF16 ms (measured, OpenVINO)", "int8 ms (measured, OpenVINO)",
                            "int8 speed-up vs FP32 (OpenVINO)", "int8 speed-up vs BF16 (OpenVINO)"]
    w8 = next(row for row in table if row[1] == "8")
    assert w8[5:] == ["120.0", "60.0", "40.0", "3.00", "1.50"]
    assert "BF16 executed as bf16" in render(build_tables(records), "md")
    ok = [r for r in records if r["status"] == "ok"]
    assert "fsrcnn_x2_latency_openvino.png" in [p.name for p in plot_run(ok, tmp_path)]
