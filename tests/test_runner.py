"""Matrix runner: YAML validation, resume after SIGKILL, no repeated work, error cells, smoke matrix."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.errors import BenchError, ConfigError
from bench.runner.cells import parse_only, select_cells
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.plan import make_plan
from bench.runner.records import CellRecord, RecordStore, read_records

REPO = Path(__file__).resolve().parents[1]
# `bench ...` in a fresh interpreter (the console script may not be on PATH in every test environment).
BENCH = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"]

# IMDN x2 (official weights) on small crops of Set5 and Set14: 2 baselines + 2 fast methods x 2 bit-widths
# = 6 rows per dataset, 12 cells of a fraction of a second each.
TINY = """\
name: tiny
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth"}
datasets:
  - {name: Set5, crop: 32, max_images: 3}
  - {name: Set14, crop: 24, max_images: 2}
bits: [4, 2]
methods: [minmax, percentile]
baselines: [fp, bicubic]
calibration: {n: 2, patch: 24, seed: 0}
latency: {runs: 1, lr_size: 16}
cost: {lr_size: 16}
"""


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # The cells here work on 24-32 pixel crops: one thread is as fast as two, and does not collapse when
    # the machine's cores are shared with other processes (OpenMP threads then spin on each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the `bench` subprocesses
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_yaml(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY, encoding="utf-8")
    return path


def _run_args(matrix: Path, out: Path, benchmark_root: Path, weights_dir: Path, train_root: Path) -> list[str]:
    return ["run", "--matrix", str(matrix), "--out", str(out), "--data-root", str(benchmark_root),
            "--weights-dir", str(weights_dir), "--calib", str(train_root), "--no-progress"]


# -------------------------------------------------------------------------------------------- records

def test_append_after_a_torn_line_repairs_the_file(tmp_path):
    store = RecordStore(tmp_path)
    (tmp_path / "records.jsonl").write_text('{"key": "a", "psnr": 30.0}\n{"key": "b", "ps', encoding="utf-8")
    assert [r["key"] for r in store.read()] == ["a"]  # the torn tail (kill -9 mid-write) is ignored
    record = CellRecord(key="c", fingerprint="f", run="r", model="m", scale=2, method="fp", label="fp",
                        method_params={}, w_bits=32, a_bits=32, dataset="Set5", dataset_label="Set5", psnr=31.5)
    store.append(record)
    assert (tmp_path / "records.jsonl").read_text(encoding="utf-8").count("\n") == 2
    assert [(r["key"], r["psnr"]) for r in store.read()] == [("a", 30.0), ("c", 31.5)]


# ----------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("body, message", [
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [nosuchmethod]\n",
     "unknown method 'nosuchmethod' in `methods[0]`; known methods: "),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbits: [4, 33]\n",
     "bad bits 33 in `bits`; use integers 2-8 (W=A)"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbits: [w4x8]\n", "bad bits 'w4x8' in `bits`"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods: [minmax]\nbitz: [4]\n", "unknown key 'bitz' in the matrix"),
    ("models: [nosuchmodel]\ndatasets: [Set5]\nmethods: [minmax]\n", "unknown model 'nosuchmodel'"),
    ("models: [imdn]\ndatasets: [Set/6]\nmethods: [minmax]\n", "bad dataset 'Set/6' in `datasets[0]`"),
    ("models: [{name: imdn, scales: [5]}]\ndatasets: [Set5]\nmethods: [minmax]\n", "model 'imdn' has no x5"),
    ("models: [{name: imdn, scope: int8}]\ndatasets: [Set5]\nmethods: [minmax]\n",
     "unknown scope 'int8' in `models[0].scope`; use auto or one of: 2dquant, 2dquant+convs, deploy, deploy-ort, "
     "fp-edges, ptq4sr"),
    ("models: [imdn]\ndatasets: [Set5]\nmethods:\n  - {name: minmax, params: {nonsense: 1}}\n",
     "bad params for method 'minmax' in `methods[0].params`"),
    ("models: [imdn]\ndatasets: [Set5\nmethods: [minmax]\n",
     ":2: invalid YAML: the list opened with `[` on line 2 is not closed (the parser stopped on line 3: "),
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


def test_demo_calibrates_on_embedded_photos_that_it_never_evaluates(tmp_path):
    from bench.data.calib import calibration_batch, list_images
    from bench.data.sample import SAMPLE_PHOTOS
    from bench.runner.stages import train_dir
    calib = load_matrix("demo").calibration
    folder = train_dir(calib, None)  # no --calib: the embedded scikit-image photos (BENCH_CACHE is a tmp dir)
    names = {p.stem for p in list_images(folder)}
    assert len(names) == 9 and not names & set(SAMPLE_PHOTOS)
    assert train_dir(calib, tmp_path) == tmp_path  # an explicit --calib wins
    batch = calibration_batch(folder, 2, n=calib.n, patch=calib.patch, seed=calib.seed)
    assert tuple(batch.shape) == (4, 3, 32, 32) and 0.0 <= float(batch.min()) < float(batch.max()) <= 1.0


def test_only_filters(tiny_yaml):
    plan = make_plan(load_matrix(tiny_yaml), {}, None, None)
    assert len(plan.cells) == 12
    picked = select_cells(plan.cells, parse_only(["method=percentile,fp", "dataset=Set5"]))
    assert [c.key for c in picked] == ["imdn/x2/fp/FP/Set5[crop32,n3]", "imdn/x2/percentile/W4A4/Set5[crop32,n3]",
                                       "imdn/x2/percentile/W2A2/Set5[crop32,n3]"]
    with pytest.raises(ConfigError, match="bad --only 'colour=red'"):
        parse_only(["colour=red"])


@pytest.mark.parametrize("weights, message", [
    ('"imdn/IMDN_x{scale}.pth"', "empty/imdn/IMDN_x2.pth"),
    ("official", "the official imdn x2 checkpoint IMDN_x2.pth is missing: run `bench models fetch imdn --scale 2`, "
                 "or put IMDN_x2.pth under --weights-dir DIR"),
])
def test_missing_weights_named_with_fix(tmp_path, benchmark_root, train_root, weights, message):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(TINY.replace('"imdn/IMDN_x{scale}.pth"', weights), encoding="utf-8")
    with pytest.raises(BenchError) as info:
        run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "r", data_root=benchmark_root,
                                                   weights_dir=tmp_path / "empty", train_root=train_root,
                                                   progress=False))
    text = str(info.value)
    assert text.startswith("matrix m.yaml: ") and message in text and "\n" not in text
    assert not (tmp_path / "r" / "records.jsonl").exists()  # stopped before any work


# ------------------------------------------------------------------------------------ resume after kill

def _keyed(records: list[dict]) -> dict[str, dict]:
    return {r["key"]: r for r in records}


def test_sigkill_then_resume_equals_uninterrupted_run(tiny_yaml, tmp_path, benchmark_root, weights_dir,
                                                      train_root):
    args = _run_args(tiny_yaml, tmp_path / "killed", benchmark_root, weights_dir, train_root)
    records_file = tmp_path / "killed" / "records.jsonl"
    process = subprocess.Popen([*BENCH, *args], cwd=tmp_path,
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
    assert len(frame) == 12 and set(frame["method"]) == {"fp", "bicubic", "minmax", "percentile"}

    # A finished matrix: nothing is recomputed (the CLI's summary says so), and it is quick.
    start = time.perf_counter()
    out = subprocess.run([*BENCH, *args], check=False, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert "12 cells: 0 computed (0 errors), 12 already done; 0 calibrations run" in out.stdout
    assert len(read_records(records_file)) == 12
    print(f"\nno-op re-run of a finished 12-cell matrix: {elapsed:.2f} s (subprocess, including imports)")


# ---------------------------------------------------------------------------------------- error cells

EXPLODING_METHOD = '''
from dataclasses import dataclass
from methods import PTQMethod, register_method


@register_method("explode-in-test")
class Explode(PTQMethod):
    """Fails on purpose: the runner must record the error and go on."""

    @dataclass(frozen=True)
    class Params:
        pass

    def calibrate(self, qmodel, ctx):
        raise RuntimeError("calibration blew up\\non two lines")
'''


def test_failing_cell_is_recorded_and_matrix_goes_on(tmp_path, benchmark_root, weights_dir, train_root, capsys):
    plugin = tmp_path / "explode.py"
    plugin.write_text(EXPLODING_METHOD, encoding="utf-8")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(TINY.replace("methods: [minmax, percentile]", "methods: [explode-in-test, minmax]")
                      .replace("bits: [4, 2]", "bits: [4]").replace("baselines: [fp, bicubic]", "baselines: [fp]")
                      .replace("  - {name: Set14, crop: 24, max_images: 2}\n", ""), encoding="utf-8")
    out = tmp_path / "run"
    args = ["--plugin", str(plugin)] + _run_args(matrix, out, benchmark_root, weights_dir, train_root)
    assert main(args) == 1  # some cells failed
    records = _keyed(read_records(out / "records.jsonl"))
    assert sorted(records) == ["imdn/x2/explode-in-test/W4A4/Set5[crop32,n3]", "imdn/x2/fp/FP/Set5[crop32,n3]",
                               "imdn/x2/minmax/W4A4/Set5[crop32,n3]"]
    failed = records["imdn/x2/explode-in-test/W4A4/Set5[crop32,n3]"]
    assert failed["status"] == "error" and failed["psnr"] is None
    assert failed["error"] == "RuntimeError: calibration blew up on two lines"
    assert records["imdn/x2/minmax/W4A4/Set5[crop32,n3]"]["status"] == "ok"
    # The error cell counts as done: a re-run does nothing unless asked to retry it.
    assert main(args) == 0
    assert "3 cells: 0 computed (0 errors), 3 already done" in capsys.readouterr().out
    assert main(args + ["--retry-errors"]) == 1
    assert "3 cells: 1 computed (1 errors), 2 already done" in capsys.readouterr().out


# ------------------------------------------------------------------------------ smoke matrix + reports

def test_smoke_matrix_and_reports(tmp_path, benchmark_root, weights_dir, train_root, capsys):
    out = tmp_path / "results" / "smoke"
    stats = run_matrix(load_matrix("smoke"), RunOptions(out=out, data_root=benchmark_root, weights_dir=weights_dir,
                                                        train_root=train_root, progress=False))
    assert (stats.total, stats.computed, stats.errors, stats.calibrations) == (4, 4, 0, 2)
    records = _keyed(read_records(out / "records.jsonl"))
    fp, bicubic = records["imdn/x2/fp/FP/Set5[crop64]"], records["imdn/x2/bicubic/-/Set5[crop64]"]
    minmax, dobi = records["imdn/x2/minmax/W4A4/Set5[crop64]"], records["imdn/x2/dobi/W4A4/Set5[crop64]"]
    assert (round(fp["psnr"], 2), round(bicubic["psnr"], 2)) == (40.19, 35.24)
    assert (fp["images"], fp["expected_images"], fp["is_subset"]) == (5, 5, True)  # crops: a labelled subset
    # Quantized PSNRs move in the second decimal with the number of threads (rounding of accumulations).
    assert minmax["psnr"] == pytest.approx(27.80, abs=0.05) and dobi["psnr"] == pytest.approx(36.13, abs=0.05)
    assert (dobi["params"], dobi["quantized_weights"], dobi["quant_scope"]) == (694_404, 692_160, "ptq4sr")
    assert f"{dobi['compression']:.3f}" == "7.729" and dobi["ops_rule"] == "counted"
    assert dobi["latency_kind"] == "fake-quant" and dobi["latency_ms"] > 0 and fp["latency_fp_ms"] > 0

    # --force recomputes the selected cells, calibration included; the newest record supersedes the old one.
    forced = run_matrix(load_matrix("smoke"), RunOptions(
        out=out, data_root=benchmark_root, weights_dir=weights_dir, train_root=train_root, progress=False,
        force=True, only=parse_only(["method=minmax"])))
    assert (forced.total, forced.computed, forced.calibrations, forced.calibrations_loaded) == (1, 1, 1, 0)
    assert len(read_records(out / "records.jsonl")) == 5 and len(make_plan(load_matrix("smoke"), {}, None, None).cells) == 4

    results_dir = str(tmp_path / "results")
    assert main(["results", "--results-dir", results_dir]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[2].split()[:7] == ["smoke", "4", "/", "4", "0", "finished", "imdn"]  # the slice adds to the plan

    assert main(["table", "--run", "smoke", "--results-dir", results_dir]) == 0
    table = capsys.readouterr().out
    assert "Set5 (crop 64) PSNR" in table
    dobi_row = next(line for line in table.splitlines() if line.startswith("| DOBI "))
    cells = [c.strip() for c in dobi_row.strip("|").split("|")]
    assert cells[1] == "4" and cells[2].startswith("**")  # best of its bit group, in bold
    assert float(cells[2].strip("*")) == pytest.approx(dobi["psnr"], abs=0.005)

    # Visual strip recomputed from the cached bounds (the smoke matrix saves no images).
    assert main(["visual", "--run", "smoke", "--results-dir", results_dir, "--image", "bird", "--crop", "20,20,64,64",
                 "--data-root", str(benchmark_root)]) == 0
    strip = Path(capsys.readouterr().out.split()[0])
    assert strip.suffix == ".png" and strip.read_bytes().startswith(b"\x89PNG") and strip.stat().st_size > 10_000
    with pytest.raises(ConfigError, match="no image 'nosuch' in the dataset; its images are: baby, bird"):
        from bench.runner.rundir import find_run
        from bench.runner.visual import Crop, build_panels
        build_panels(find_run("smoke", results_dir), "nosuch", Crop(0, 0, 8, 8), data_root=benchmark_root)


# ------------------------------------------------------------------------------- an edited matrix, one folder

GROW = """\
name: grow
models: [{name: fsrcnn, scales: [2], weights: shipped}]
datasets: [{name: sample, crop: 24, max_images: 2}]
bits: [4]
methods: [minmax]
baselines: [fp]
calibration: {n: 2, patch: 24, seed: 0, train_dir: sample-train}
latency: {runs: 0}
cost: {lr_size: 16}
"""


def test_adding_a_method_to_a_matrix_appends_its_cells_to_the_run(tmp_path):
    from bench.runner.rundir import RunDir, run_summary
    path, out, notes = tmp_path / "grow.yaml", tmp_path / "run", []
    path.write_text(GROW, encoding="utf-8")
    run_matrix(load_matrix(path), RunOptions(out=out, progress=False, announce=notes.append))
    before = read_records(out / "records.jsonl")
    assert [r["key"] for r in before] == ["fsrcnn/x2/fp/FP/sample[crop24,n2]", "fsrcnn/x2/minmax/W4A4/sample[crop24,n2]"]

    path.write_text(GROW.replace("methods: [minmax]", "methods: [minmax, percentile]"), encoding="utf-8")
    stats = run_matrix(load_matrix(path), RunOptions(out=out, progress=False, announce=notes.append))
    after = read_records(out / "records.jsonl")
    assert stats.already_done == 2 and stats.computed_keys == ["fsrcnn/x2/percentile/W4A4/sample[crop24,n2]"]
    assert after[:2] == before and len(after) == 3  # the earlier records are untouched
    summary = run_summary(RunDir(out))
    assert (summary["planned"], summary["done"], summary["state"]) == (3, 3, "finished") and notes == []

    # Taking the method out again computes nothing and says what happens to its record.
    path.write_text(GROW, encoding="utf-8")
    stats = run_matrix(load_matrix(path), RunOptions(out=out, progress=False, announce=notes.append))
    assert stats.computed == 0 and len(read_records(out / "records.jsonl")) == 3
    assert run_summary(RunDir(out))["planned"] == 2
    assert len(notes) == 1 and "1 recorded cell(s) the matrix no longer names (e.g. fsrcnn/x2/percentile/W4A4/" \
                                "sample[crop24,n2]) stay in records.jsonl" in notes[0]
