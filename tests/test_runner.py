"""Matrix runner: YAML validation, resume after SIGKILL, no repeated work, error cells, smoke matrix."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import ConfigError
from bench.runner.cells import parse_only, select_cells
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.plan import make_plan
from bench.runner.records import read_records

REPO = Path(__file__).resolve().parents[1]

# IMDN x2 (official weights) on crops of Set5 and Set14: 2 baselines + 2 methods x 2 bit-widths = 6 rows
# per dataset, 12 cells, a few seconds each on 2 CPU cores.
TINY = """\
name: tiny
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth"}
datasets:
  - {name: Set5, crop: 48, max_images: 3}
  - {name: Set14, crop: 32, max_images: 2}
bits: [4, 2]
methods: [minmax, dobi]
baselines: [fp, bicubic]
calibration: {n: 4, patch: 32, seed: 0}
latency: {runs: 1, lr_size: 32}
cost: {lr_size: 32}
"""


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


def _run_args(matrix: Path, out: Path, benchmark_root: Path, weights_dir: Path, train_root: Path) -> list[str]:
    return ["run", "--matrix", str(matrix), "--out", str(out), "--data-root", str(benchmark_root),
            "--weights-dir", str(weights_dir), "--calib", str(train_root), "--no-progress"]


# ----------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("body, message", [
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [nosuchmethod]\n",
     "unknown method 'nosuchmethod' in `methods[0]`; known methods: "),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbits: [4, 33]\n",
     "bad bits 33 in `bits`; use integers 2-8 (W=A)"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbits: [w4x8]\n", "bad bits 'w4x8' in `bits`"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbitz: [4]\n", "unknown key 'bitz' in the matrix"),
    ("models: [nosuchmodel]\ndatasets: [Set5]\nmethods: [minmax]\n", "unknown model 'nosuchmodel'"),
    ("models: [imdn]\ndatasets: [Set6]\nmethods: [minmax]\n", "unknown dataset 'Set6' in `datasets[0]`"),
    ("models: [{name: imdn, scales: [5]}]\ndatasets: [Set5]\nmethods: [minmax]\n", "model 'imdn' has no x5"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods:\n  - {name: minmax, params: {nonsense: 1}}\n",
     "bad params for method 'minmax' in `methods[0].params`"),
    ("models: [imdn]\ndatasets: [Set5\nmethods: [minmax]\n", ":3: invalid YAML ("),
])
def test_matrix_errors_are_one_line_and_name_the_file(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_matrix(path)
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_cli_reports_broken_yaml_with_line_number(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nmodels: [imdn]\n  datasets: [Set5]\n", encoding="utf-8")
    assert main(["run", "--matrix", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {path}:3: invalid YAML (") and err.count("\n") == 1


def test_shipped_matrices_are_valid():
    cells = {}
    for name in ("demo", "smoke", "paper", "full"):
        matrix = load_matrix(name)
        if not matrix.expands_registries:
            cells[name] = len(make_plan(matrix, {}, None, None).cells)
    # Table 3: 3 scales x 5 datasets x (FP + bicubic + 6 methods x 3 bit-widths).
    assert cells["paper"] == 3 * 5 * (2 + 6 * 3)


def test_only_filters(tiny_yaml):
    plan = make_plan(load_matrix(tiny_yaml), {}, None, None)
    assert len(plan.cells) == 12
    picked = select_cells(plan.cells, parse_only(["method=dobi,fp", "dataset=Set5"]))
    assert [c.key for c in picked] == ["imdn/x2/fp/FP/Set5[crop48,n3]", "imdn/x2/dobi/W4A4/Set5[crop48,n3]",
                                       "imdn/x2/dobi/W2A2/Set5[crop48,n3]"]
    with pytest.raises(ConfigError, match="bad --only 'colour=red'"):
        parse_only(["colour=red"])


def test_missing_weights_named_with_fix(tiny_yaml, tmp_path, benchmark_root, train_root):
    with pytest.raises(Exception) as info:
        run_matrix(load_matrix(tiny_yaml), RunOptions(out=tmp_path / "r", data_root=benchmark_root,
                                                      weights_dir=tmp_path / "empty", train_root=train_root,
                                                      progress=False))
    text = str(info.value)
    assert "IMDN_x2.pth" in text and "\n" not in text


# ------------------------------------------------------------------------------------ resume after kill

def _keyed(records: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in records}


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_yaml, tmp_path, benchmark_root, weights_dir,
                                                      train_root):
    args = _run_args(tiny_yaml, tmp_path / "killed", benchmark_root, weights_dir, train_root)
    records_file = tmp_path / "killed" / "records.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if records_file.exists() and records_file.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed: " + process.stdout.read().decode()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_lines = records_file.read_text().count("\n")
    assert 3 <= killed_lines < 12

    # Resume in-process: only the missing cells are computed.
    resumed = run_matrix(load_matrix(tiny_yaml), RunOptions(
        out=tmp_path / "killed", data_root=benchmark_root, weights_dir=weights_dir, train_root=train_root,
        progress=False))
    assert resumed.already_done == killed_lines and resumed.computed == 12 - killed_lines and resumed.errors == 0

    reference = run_matrix(load_matrix(tiny_yaml), RunOptions(
        out=tmp_path / "reference", data_root=benchmark_root, weights_dir=weights_dir, train_root=train_root,
        progress=False))
    assert reference.computed == 12

    final = read_records(records_file)
    assert len(final) == len({r["key"] for r in final}) == 12  # no duplicates
    final, expected = _keyed(final), _keyed(read_records(tmp_path / "reference" / "records.jsonl"))
    assert set(final) == set(expected)
    for key, record in final.items():
        assert record["status"] == "ok", record["error"]
        assert record["psnr"] == pytest.approx(expected[key]["psnr"], abs=1e-6), key
        assert record["ssim"] == pytest.approx(expected[key]["ssim"], abs=1e-8), key
    # pandas reads the records directly
    frame = pd.read_json(records_file, lines=True)
    assert len(frame) == 12 and set(frame["method"]) == {"fp", "bicubic", "minmax", "dobi"}

    # A finished matrix: nothing is recomputed (the CLI's summary says so), and it is quick.
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert "12 cells: 0 computed (0 errors), 12 already done; 0 calibrations run" in out.stdout
    assert len(read_records(records_file)) == 12
    print(f"\nno-op re-run of a finished 12-cell matrix: {elapsed:.2f} s (subprocess, including imports)")
