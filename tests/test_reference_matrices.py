"""The reference tables in results/reference/ that a benchmark run can express are matrices
(matrices/reference/) and `bench table` output of a committed run folder (results/reference/runs/<name>):

* each table's text below its `<!-- bench table -->` line is what `bench table` (with the table's own flags:
  `--no-deployment` for the quality tables, `--digits psnr=3` for the SwinIR-light tables, whose methods differ by
  hundredths of a dB; the deployment page keeps its size/latency/runtime-PSNR table) prints from the run folder
  today, and the command at the top of the file regenerates it;
* the run folder is a complete run of its matrix: one ok record per cell, with the fingerprint `bench run`
  gives that cell (so `bench run` into it computes nothing);
* one cheap cell of each matrix, run again with `bench run --only ...`, gives its committed PSNR to 0.01 dB
  (IMDN x2 MinMax W4A4 on Set5, IMDTN x4 MinMax W4A4 on Set5: about 35 s each on one thread; the mixed-precision
  table's uniform IMDN x4 DOBI W3A3 on Set5, its cheapest; the deployment page's IMDN x2 MinMax W7A8 on Set5, with
  its OpenVINO and onnxruntime PSNR; they need the shared folder and skip without it).
  SwinIR-light x2: the FP cell of one table (the note at TABLES says why).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.cli.report_cmd import TABLE_MARKER
from bench.runner.execute import RunOptions, pending_work, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.plan import matrix_cells
from bench.runner.records import RecordStore, latest_by_key, read_records

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "reference"
# table -> (matrix, the cheap cell a test runs again or None, the `bench table` flags of its command)
QUALITY, SWINIR = "--no-deployment", "--no-deployment --digits psnr=3"
TABLES = {"imdn-w4a4": ("reference/imdn-w4a4", "imdn/x2/minmax/W4A4/Set5", QUALITY),
          "imdtn-w4a4": ("reference/imdtn-w4a4", "imdtn/x4/minmax/W4A4/Set5", QUALITY),
          "mixed-precision": ("reference/mixed-precision", "imdn/x4/dobi/W3A3/Set5", QUALITY),
          "swinir-light-vit-ptq": ("reference/swinir-light-vit-ptq", "swinir-light/x2/fp/FP/Set5", SWINIR),
          "swinir-light-w4a4-noisy-condi": ("reference/swinir-light-w4a4-noisy-condi", None, SWINIR),
          "swinir-light-w2a2-noisy-condi": ("reference/swinir-light-w2a2-noisy-condi", None, SWINIR),
          "deploy-int8-imdn": ("reference/deploy-int8-imdn", "imdn/x2/minmax/W7A8/Set5", ""),
          "deploy-int8-transformers": ("reference/deploy-int8-transformers", None, "")}
# SwinIR-light x2: the FP cell of one table (28 s on one thread), not a quantized one: the cheapest, MinMax W4A4
# Set5, takes 72 s on one thread (measured with the cell's own `bench run --only`), the others minutes. The three
# tables' FP records are one measurement (test_swinir_light_tables_share_one_fp_record), so one rerun covers them.
RERUN = sorted(table for table, (_, cell, _) in TABLES.items() if cell)


def _run_folder(table: str) -> Path:
    return REFERENCE / "runs" / table


def _records(table: str) -> dict[str, dict]:
    """The latest record of each cell (a cell measured again with --force has two)."""
    return latest_by_key(read_records(_run_folder(table) / "records.jsonl"))


@pytest.mark.parametrize("table", sorted(TABLES))
def test_table_is_bench_table_output_of_its_run_folder(table, capsys):
    text = (REFERENCE / f"{table}.md").read_text(encoding="utf-8")
    preamble, marker, body = text.partition(TABLE_MARKER + "\n")
    assert marker, f"{table}.md has no {TABLE_MARKER} line"
    matrix, _, flags = TABLES[table]
    assert main(["table", "--run", str(_run_folder(table)), *flags.split()]) == 0
    printed = capsys.readouterr().out
    assert body == "\n" + printed, (f"results/reference/{table}.md differs from `bench table`: regenerate it with "
                                    f"the bench table command at its top")
    command = (f"bench run --matrix {matrix} --data-root SHARED/data/benchmark --weights-dir SHARED/weights "
               f"--calib SHARED/data/train --threads 1 --out results/reference/runs/{table} && "
               f"bench table --run results/reference/runs/{table} {flags + ' ' if flags else ''}"
               f"--output results/reference/{table}.md --keep-preamble")
    assert command in preamble.replace("\\\n", "").replace("\n", " ")


@pytest.mark.parametrize("table", sorted(TABLES))
def test_run_folder_has_an_ok_record_for_every_matrix_cell(table):
    keys = {c.key for c in matrix_cells(load_matrix(TABLES[table][0]))}
    records = _records(table)
    assert set(records) == keys
    assert all(r["status"] == "ok" and r["run"] == table and 0 < r["psnr"] < 50 for r in records.values())
    meta = json.loads((_run_folder(table) / "run.json").read_text())
    assert set(meta["planned_cells"]) == keys


@pytest.mark.parametrize("table", sorted(TABLES))
def test_bench_run_into_the_run_folder_computes_nothing(table, weights_dir):
    # Every record carries the fingerprint `bench run` gives its cell (settings and weights file digest).
    matrix = load_matrix(TABLES[table][0])
    work = pending_work(matrix, RunOptions(out=_run_folder(table), weights_dir=weights_dir),
                        RecordStore(_run_folder(table)))
    assert len(work.plan.cells) == len(_records(table)) and work.pending == []


@pytest.mark.parametrize("table", RERUN)
def test_one_cell_run_again_gives_the_committed_psnr(table, tmp_path, benchmark_root, weights_dir, train_root):
    matrix_name, key, _ = TABLES[table]
    model, scale, method, bits, dataset = key.split("/")
    only = {"model": {model}, "scale": {scale}, "label": {method}, "bits": {bits}, "dataset": {dataset}}
    stats = run_matrix(load_matrix(matrix_name), RunOptions(
        out=tmp_path / table, data_root=benchmark_root, weights_dir=weights_dir, train_root=train_root,
        progress=False, only=only))
    assert stats.computed_keys == [key]
    fresh = read_records(tmp_path / table / "records.jsonl")[0]
    committed = _records(table)[key]
    assert fresh["fingerprint"] == committed["fingerprint"]
    for metric, tolerance in (("psnr", 0.01), ("ssim", 1e-4)):  # and in each runtime, where the page has them
        for field in (metric, f"{metric}_openvino", f"{metric}_onnxruntime"):
            if committed.get(field) is not None:
                assert fresh[field] == pytest.approx(committed[field], abs=tolerance), field


def test_keep_preamble_replaces_only_the_table(tmp_path, capsys):
    target = tmp_path / "t.md"
    target.write_text(f"# notes\n\nthe command\n\n{TABLE_MARKER}\n\nan old table\n", encoding="utf-8")
    run = str(_run_folder("imdtn-w4a4"))
    assert main(["table", "--run", run, "--no-deployment", "--output", str(target), "--keep-preamble"]) == 0
    assert main(["table", "--run", run, "--no-deployment"]) == 0
    printed = capsys.readouterr().out.split("\n", 1)[1]  # after the "wrote ..." line
    assert target.read_text() == f"# notes\n\nthe command\n\n{TABLE_MARKER}\n\n{printed}"
    target.write_text("no marker\n", encoding="utf-8")
    assert main(["table", "--run", run, "--output", str(target), "--keep-preamble"]) == 2
    err = capsys.readouterr().err
    assert f"{target} has no line {TABLE_MARKER}" in err and err.count("\n") == 1
    assert target.read_text() == "no marker\n"


def test_every_reference_matrix_has_its_table_and_run_folder():
    from bench.runner.matrix import available_matrices
    assert {m for m in available_matrices() if m.startswith("reference/")} == {m for m, _, _ in TABLES.values()}
    for table in TABLES:
        assert (REFERENCE / f"{table}.md").is_file() and (_run_folder(table) / "records.jsonl").is_file()


def test_swinir_light_tables_share_one_fp_record():
    # The W2A2 table's FP row is the W4A4 table's, and both equal the ViT table's: one model, one evaluation.
    fp = [_records(table)["swinir-light/x2/fp/FP/Set5"] for table in TABLES if table.startswith("swinir-light")]
    assert len(fp) == 3 and len({(r["psnr"], r["ssim"], r["fingerprint"]) for r in fp}) == 1
    assert round(fp[0]["psnr"], 3) == 35.156
