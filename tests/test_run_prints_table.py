"""`bench run` ends with its result: the run's main table, the text `bench table` prints for the run, then the
next commands, ready to paste. And the README's demo table is that printout of the committed demo records."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from bench.cli import main
from bench.runner.tables import render_run

REPO = Path(__file__).resolve().parents[1]
DEMO_RUN = REPO / "results" / "reference" / "demo-run"
# The README block that tests/test_run_prints_table.py keeps equal to the demo's printout.
README_BLOCK = re.compile(r"<!-- demo-table -->\n(.*?)<!-- /demo-table -->", re.S)

# FSRCNN x2 (shipped weights) on two 32-pixel crops of the embedded `sample` photos, calibrated on the embedded
# `sample-train` photos: nothing outside the clone, 4 cells in about 10 s on one thread.
TINY = """\
name: tiny-sample
models:
  - {name: fsrcnn, scales: [2], weights: shipped}
datasets:
  - {name: sample, crop: 32, max_images: 2}
bits: [4]
methods: [minmax, percentile]
baselines: [fp, bicubic]
calibration: {n: 2, patch: 24, seed: 0, train_dir: sample-train}
latency: {runs: 1, lr_size: 16}
cost: {lr_size: 16}
"""


@pytest.fixture
def one_thread(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def _next_commands(run_arg: str, folder: str) -> str:
    return ("\nNext:\n"
            f"  bench table --run {run_arg}   # this table and the size/latency one; --format latex|csv, --significance\n"
            f"  bench plot --run {run_arg}    # figures: PSNR vs bits and size, latency; in {folder}/figures\n"
            f"  bench report --run {run_arg}  # all of it in one HTML page, {folder}/report.html\n")


def test_bench_run_ends_with_the_table_and_the_next_commands(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY, encoding="utf-8")
    run_args = ["run", "--matrix", "tiny.yaml", "--out", "results/tiny", "--no-progress", "--threads", "1"]
    assert main(run_args) == 0
    printed = capsys.readouterr().out

    assert main(["table", "--run", "results/tiny", "--no-deployment"]) == 0
    table = capsys.readouterr().out
    # In the default results folder the commands name the run; they work pasted as they are.
    assert "results/tiny: 4 cells: 4 computed (0 errors), 0 already done; 2 calibrations run" in printed
    assert printed.endswith("\n\n" + table + _next_commands("tiny", "results/tiny"))
    assert table == render_run(tmp_path / "results" / "tiny", deployment=False)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert list(rows) == ["Method", "FP", "Bicubic", "MinMax", "Percentile"]
    # Percentile leads MinMax by about half a dB on these crops: the one bold pair.
    assert table.count("**") == 4 and rows["Percentile"].count("**") == 4
    assert "Bold: lead > 0.05 dB PSNR / > 0.0005 SSIM over the runner-up of its bit group" in table

    pasted = next(line for line in printed.splitlines() if line.strip().startswith("bench table"))
    assert main(shlex.split(pasted.split("#")[0])[1:]) == 0
    assert capsys.readouterr().out.startswith(table.rstrip("\n"))  # then the size/latency table

    # --deployment: the end is `bench table`'s default text (with the size table); a finished run computes nothing.
    assert main(run_args + ["--deployment"]) == 0
    printed = capsys.readouterr().out
    assert "4 cells: 0 computed (0 errors), 4 already done" in printed
    assert main(["table", "--run", "tiny"]) == 0
    full = capsys.readouterr().out
    assert "size KB (cost model)" in full and printed.endswith("\n\n" + full + _next_commands("tiny", "results/tiny"))

    # Elsewhere, the commands name the folder.
    other = tmp_path / "elsewhere" / "my run"
    assert main(run_args[:3] + ["--out", str(other), "--no-progress", "--threads", "1"]) == 0
    assert capsys.readouterr().out.endswith(_next_commands(shlex.quote(str(other)), str(other)))


def test_readme_demo_table_is_the_printout_of_the_committed_demo_records():
    expected = render_run(DEMO_RUN, deployment=False)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = README_BLOCK.search(readme)
    assert block is not None, ("README.md has no demo table between <!-- demo-table --> and <!-- /demo-table -->; "
                               f"it should hold what `bench run --matrix demo` printed for {DEMO_RUN}:\n{expected}")
    assert block.group(1).strip() == expected.strip(), (
        f"README.md's demo table differs from the printout of {DEMO_RUN}/records.jsonl; put this between the "
        f"markers:\n{expected}")
