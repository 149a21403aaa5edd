"""Tables and plots from a small synthetic records file (no model runs)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main
from bench.runner.plots import plot_run
from bench.runner.records import read_records
from bench.runner.tables import build_tables, load_reference, render

# (label, method, w_bits, dataset, psnr, ssim): x2 Set5 + Urban100 subset; 4-bit and 2-bit groups.
CELLS = [
    ("fp", "fp", 32, "Set5", 38.171, 0.96123),
    ("fp", "fp", 32, "Urban100", 32.80, 0.9345),
    ("bicubic", "bicubic", None, "Set5", 32.25, 0.9118),
    ("bicubic", "bicubic", None, "Urban100", 25.96, 0.8088),
    ("minmax", "minmax", 4, "Set5", 34.394, 0.92021),
    ("minmax", "minmax", 4, "Urban100", 28.40, 0.8520),
    ("dobi", "dobi", 4, "Set5", 37.4449, 0.95679),
    ("dobi", "dobi", 4, "Urban100", 31.29, 0.9193),
    ("minmax", "minmax", 2, "Set5", 33.88, 0.9185),
    ("minmax", "minmax", 2, "Urban100", 27.48, 0.8501),
    ("dobi", "dobi", 2, "Set5", 33.88, 0.9361),   # PSNR tie of the 2-bit group: no bold, "Tie" under the table
    ("dobi", "dobi", 2, "Urban100", 28.52, 0.8727),
]


def _record(label, method, bits, dataset, psnr, ssim):
    subset = dataset == "Urban100"
    bits_text = "-" if bits is None else ("FP" if bits == 32 else f"W{bits}A{bits}")
    size = {None: None, 32: 3_511_008, 4: 1_143_808, 2: 797_608}[bits]
    return {
        "key": f"swinir-light/x2/{label}/{bits_text}/{dataset}", "fingerprint": "abc", "run": "synthetic",
        "model": "swinir-light", "scale": 2, "method": method, "label": label, "method_params": {},
        "w_bits": bits, "a_bits": bits, "dataset": dataset, "dataset_label": dataset, "status": "ok",
        "error": None, "images": 10 if subset else 5, "expected_images": 100 if subset else 5,
        "is_subset": subset, "crop": None, "psnr": psnr, "ssim": ssim, "lpips": None,
        "per_image": [{"name": "img", "psnr": psnr, "ssim": ssim}], "model_size_bytes": size,
        "latency_ms": None if bits in (None, 32) else 40.0 + bits, "latency_fp_ms": None if bits is None else 30.0,
        "latency_lr_size": 128,
    }


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "results" / "synthetic"
    run.mkdir(parents=True)
    lines = [json.dumps(_record(*cell)) for cell in CELLS]
    failed = _record("percentile", "percentile", 4, "Set5", None, None)
    failed.update(key="swinir-light/x2/percentile/W4A4/Set5", status="error", error="RuntimeError: boom")
    lines.append(json.dumps(failed))
    # A torn last line, as left by kill -9 in the middle of a write: ignored on read.
    (run / "records.jsonl").write_text("\n".join(lines) + '\n{"key": "swinir-light/x2/do', encoding="utf-8")
    return run


@pytest.fixture
def reference_csv(tmp_path):
    path = tmp_path / "ref.csv"
    path.write_text("method,scale,bits,dataset,psnr,ssim\n"
                    "SwinIR-light FP,2,32,Set5,38.15,0.9611\n"
                    "Bicubic,2,,Set5,32.25,0.9118\n"
                    "MinMax,2,4,Set5,34.39,0.9202\n"
                    "DOBI,2,4,Set5,37.44,0.9568\n"
                    "DOBI,2,4,Urban100,31.29,0.9193\n"
                    "MinMax,3,4,Set5,31.66,0.8784\n", encoding="utf-8")
    return path


def test_records_read_with_pandas_and_torn_line_ignored(run_dir):
    records = read_records(run_dir / "records.jsonl")
    assert len(records) == len(CELLS) + 1
    frame = pd.read_json(run_dir / "records.jsonl", lines=True, nrows=len(CELLS) + 1)
    assert frame.loc[frame["label"] == "dobi", "psnr"].round(2).tolist() == [37.44, 31.29, 33.88, 28.52]


def test_markdown_table_layout_and_bold(run_dir):
    text = render(build_tables(read_records(run_dir / "records.jsonl")), "md")
    lines = text.splitlines()
    assert lines[0] == "### swinir-light x2"
    header = next(line for line in lines if line.startswith("| Method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "Method", "Bits", "Set5 PSNR", "Set5 SSIM", "Urban100 (10/100) PSNR", "Urban100 (10/100) SSIM"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if line.startswith("| ")][1:]
    assert rows == [
        ["FP", "32", "38.17", "0.9612", "32.80", "0.9345"],
        ["Bicubic", "-", "32.25", "0.9118", "25.96", "0.8088"],
        ["MinMax", "4", "34.39", "0.9202", "28.40", "0.8520"],
        ["DOBI", "4", "**37.44**", "**0.9568**", "**31.29**", "**0.9193**"],
        ["MinMax", "2", "33.88", "0.9185", "27.48", "0.8501"],
        ["DOBI", "2", "33.88", "**0.9361**", "**28.52**", "**0.8727**"],
    ]
    assert "- swinir-light/x2/percentile/W4A4/Set5: RuntimeError: boom" in lines
    assert lines[lines.index("| DOBI     | 2      | 33.88       | **0.9361**  | **28.52**                | "
                             "**0.8727**               |") + 2:][:2] == [
        "Bold: lead > 0.05 dB PSNR / > 0.0005 SSIM over the runner-up of its bit group (printed values); otherwise "
        "tie, no bold.", "Tie: 2-bit Set5 PSNR (lead 0.00 dB)."]


def test_latex_table_bold_and_escaping(run_dir):
    text = render(build_tables(read_records(run_dir / "records.jsonl")), "latex")
    assert r"\multicolumn{2}{c}{Urban100 (10/100)}" in text
    assert r"DOBI & 4 & \textbf{37.44} & \textbf{0.9568} & \textbf{31.29} & \textbf{0.9193} \\" in text
    assert r"MinMax & 4 & 34.39 & 0.9202 & 28.40 & 0.8520 \\" in text
    assert r"MinMax & 2 & 33.88 & 0.9185 & 27.48 & 0.8501 \\" in text  # the group ties: no bold
    assert text.startswith("% swinir-light x2; needs \\usepackage{booktabs}\n\\begin{table}[t]\n\\centering\n"
                           "\\caption{swinir-light x2: PSNR (dB) / SSIM on the Y channel")
    assert ("then each bit-width. Bold: lead $>$ 0.05 dB PSNR / $>$ 0.0005 SSIM over the runner-up of its bit group "
            "(printed values); otherwise tie, no bold.}\n") in text
    assert "\\label{tab:swinir-light-x2}\n" in text
    assert text.endswith("\\end{tabular}\n% Tie: 2-bit Set5 PSNR (lead 0.00 dB)\n\\end{table}\n")
    assert text.count(r"\midrule") == 4  # after the header, then between FP | bicubic | 4-bit | 2-bit


def test_reference_rows_and_deltas(run_dir, reference_csv):
    records = read_records(run_dir / "records.jsonl")
    reference = load_reference(reference_csv)
    md = render(build_tables(records, reference), "md")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")]
    labels = [r[0] for r in rows[1:]]
    assert labels == ["FP", "*SwinIR-light FP (paper)*", "Bicubic", "*Bicubic (paper)*", "MinMax",
                      "*MinMax (paper)*", "DOBI", "*DOBI (paper)*", "MinMax", "DOBI"]
    assert rows[8] == ["*DOBI (paper)*", "4", "37.44", "0.9568", "31.29", "0.9193"]
    delta = render(build_tables(records, reference, delta=True), "csv").splitlines()
    assert delta[0] == ("model,scale,method,bits,reference,Set5 PSNR,Set5 ΔPSNR,Set5 SSIM,Set5 ΔSSIM,"
                        "Urban100 (10/100) PSNR,Urban100 (10/100) ΔPSNR,Urban100 (10/100) SSIM,"
                        "Urban100 (10/100) ΔSSIM")
    assert delta[1] == "swinir-light,2,FP,32,0,38.17,+0.02,0.9612,+0.0001,32.80,,0.9345,"
    assert delta[3] == "swinir-light,2,MinMax,4,0,34.39,+0.00,0.9202,+0.0000,28.40,,0.8520,"


def test_shared_reference_table3_loads(shared_dir):
    reference = load_reference(shared_dir / "reference" / "2dquant-table3.csv")
    assert len(reference) == 263
    row = next(r for r in reference if r.method == "ptq4sr" and r.scale == 4 and r.bits == 2 and r.dataset == "Set5")
    assert (row.psnr, row.ssim, row.model) == (25.01, 0.5554, "swinirlight")


def test_plots_are_valid_png_and_pdf(run_dir, tmp_path):
    paths = plot_run(read_records(run_dir / "records.jsonl"), tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"swinir-light_x2_{kind}.{fmt}" for kind in ("psnr_vs_bits", "psnr_vs_size", "latency")
                           for fmt in ("png", "pdf"))
    for path in paths:
        data = path.read_bytes()
        magic = b"\x89PNG\r\n\x1a\n" if path.suffix == ".png" else b"%PDF-"
        assert data.startswith(magic), path
        assert len(data) > 5000, (path, len(data))


def test_table_cli(run_dir, capsys, tmp_path):
    assert main(["table", "--run", str(run_dir), "--format", "latex"]) == 0
    assert r"\textbf{37.44}" in capsys.readouterr().out
    assert main(["table", "--run", "nope", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: no run 'nope'") and err.count("\n") == 1
    assert main(["table", "--run", str(run_dir), "--format", "csv", "--digits", "psnr=3,ssim=5"]) == 0
    assert "swinir-light,2,DOBI,4,0,37.445,0.95679,31.290,0.91930" in capsys.readouterr().out.splitlines()
    assert main(["table", "--run", str(run_dir), "--digits", "psnr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: bad --digits 'psnr=1'") and err.count("\n") == 1
