"""`bench run --plan`: the size of a matrix, what is done and the remaining time, before any work and
without building a model."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch

import bench.runner.stages
import models
from bench.cli import main
from bench.errors import ConfigError
from bench.runner.matrix import load_matrix
from bench.runner.plan import make_plan
from bench.runner.records import read_records

REPO_MATRICES = Path(__file__).resolve().parents[1] / "matrices"


@pytest.fixture
def no_model_built(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built")
    monkeypatch.setattr(models, "create_model", refuse)
    monkeypatch.setattr(bench.runner.stages, "build_model", refuse)


def _paths(benchmark_root, weights_dir, train_root) -> list[str]:
    return ["--data-root", str(benchmark_root), "--weights-dir", str(weights_dir), "--calib", str(train_root)]


def _total(output: str) -> tuple[int, ...]:
    match = re.search(r"^total: (\d+) cells, (\d+) calibrations; (\d+) done, (\d+) to run in (\d+) tasks "
                      r"\((\d+) calibrations to run\); estimate (.*)$", output, re.M)
    assert match, output
    return tuple(int(g) for g in match.groups()[:-1]) + (match.group(7),)


def test_full_matrix_plan_is_quick_and_builds_no_model(tmp_path, benchmark_root, weights_dir, train_root,
                                                       no_model_built, capsys):
    start = time.perf_counter()
    assert main(["run", "--matrix", "full", "--plan", "--out", str(tmp_path / "full"), "--threads", "1",
                 *_paths(benchmark_root, weights_dir, train_root)]) == 0
    elapsed = time.perf_counter() - start
    output = capsys.readouterr().out
    cells = make_plan(load_matrix("full"), {}, benchmark_root, weights_dir, load_models=False).cells
    calibrations = {c.calib_key for c in cells if not c.is_baseline}
    groups = {(c.model.name, c.scale) for c in cells}
    assert _total(output) == (len(cells), len(calibrations), 0, len(cells), len(calibrations) + len(groups),
                              len(calibrations), f"unknown ({len(calibrations) + len(groups)} tasks, no recorded time)")
    # imdn x2 has official weights in the shared folder and all six test sets: (2 baselines + methods x 3 bits) x 6
    from methods.registry import list_methods
    per_model = (2 + 3 * len(list_methods())) * 6
    row = next(line.split() for line in output.splitlines() if line.startswith("imdn ") and " x2 " in line)
    assert row[:7] == ["imdn", "x2", str(per_model), "0", str(per_model), str(3 * len(list_methods())),
                       str(3 * len(list_methods()))]
    assert not (tmp_path / "full").exists()  # a plan writes nothing
    assert elapsed < 30, f"bench run --matrix full --plan took {elapsed:.1f} s"
    print(f"\nbench run --matrix full --plan: {elapsed:.2f} s, {len(cells)} cells")


def test_plan_availability_by_files_matches_loading(benchmark_root, weights_dir):
    """The quick plan keeps exactly the cells that building the models and loading the sets keeps (IMDN slice)."""
    matrix, only = load_matrix("full"), {"model": {"imdn", "fsrcnn"}, "scale": {"2"}}
    quick = make_plan(matrix, only, benchmark_root, weights_dir, load_models=False)
    loaded = make_plan(matrix, only, benchmark_root, weights_dir)
    assert quick.cells == loaded.cells and len(quick.cells) > 0
    assert [note.split(":")[0] for note in quick.skipped] == [note.split(":")[0] for note in loaded.skipped]


def test_plan_reports_done_cells_and_estimates_from_recorded_times(tmp_path, benchmark_root, weights_dir, train_root,
                                                                   capsys, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path / "smoke"
    base = ["run", "--matrix", "smoke", "--out", str(out), "--threads", "1", "--no-progress",
            *_paths(benchmark_root, weights_dir, train_root)]
    try:
        assert main(base + ["--only", "method=minmax"]) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    [minmax] = read_records(out / "records.jsonl")
    monkeypatch.setattr(models, "create_model", lambda *a, **k: pytest.fail("a model was built"))

    # Left: the baselines (evaluations timed like minmax's on the same model and set) and DOBI (never calibrated).
    assert main(base + ["--plan"]) == 0
    evals = 2 * minmax["eval_seconds"]
    assert _total(capsys.readouterr().out) == (4, 2, 1, 3, 2, 1, f"{evals:.1f} s + 1 task without a recorded time")

    # --force: everything again, timed by the run's own records (minmax's calibration and evaluation included).
    assert main(base + ["--plan", "--force", "--only", "method=minmax"]) == 0
    expected = minmax["calib_seconds"] + minmax["eval_seconds"]
    assert _total(capsys.readouterr().out) == (1, 1, 0, 1, 1, 1, f"{expected:.1f} s")

    # Without --force the cached minmax bounds would be reused: only its evaluation is left to estimate.
    (out / "records.jsonl").write_text("", encoding="utf-8")
    assert main(base + ["--plan", "--only", "method=minmax"]) == 0
    assert _total(capsys.readouterr().out) == (1, 1, 0, 1, 1, 0, "unknown (1 task, no recorded time)")


def test_full_matrix_takes_official_checkpoints_only_unless_asked(tmp_path, benchmark_root, weights_dir):
    """`models: all` never mixes the project's shipped CPU-trained weights (SwinIR-light, FSRCNN) with official CNN
    checkpoints unless `all_models_weights: default`; the skipped models are named with the reason."""
    full = load_matrix("full")
    assert full.all_models_weights == "official"
    plan = make_plan(full, {"scale": {"2"}}, benchmark_root, weights_dir, load_models=False)
    names = {c.model.name for c in plan.cells}
    assert "imdn" in names and not names & {"swinir-light", "fsrcnn"}
    assert any(note.startswith("swinir-light x2:") for note in plan.skipped)
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text((REPO_MATRICES / "full.yaml").read_text().replace("all_models_weights: official",
                                                                       "all_models_weights: default"))
    names = {c.model.name for c in make_plan(load_matrix(mixed), {"scale": {"2"}}, benchmark_root, weights_dir,
                                             load_models=False).cells}
    assert {"imdn", "swinir-light", "fsrcnn"} <= names
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO_MATRICES / "full.yaml").read_text().replace("all_models_weights: official",
                                                                     "all_models_weights: shipped"))
    with pytest.raises(ConfigError, match="all_models_weights"):
        load_matrix(bad)


# ------------------------------------------------------------------------------------------------ blocks

BLOCKS = """\
name: blocks
models:
  - {name: imdn, scales: [2, 4], weights: official}
datasets: [Set5, Set14]
calibration: {n: 2, patch: 24, seed: 0}
blocks:
  - bits: [4]
    baselines: [fp]
    methods: [minmax, {name: ptq4sr, label: ptq4sr-250, params: {iters: 250}}]
  - models: [{name: imdn, scales: [2], weights: official}]
    datasets: [Set5]
    bits: [2]
    methods: [minmax, {name: ptq4sr, label: ptq4sr-100, params: {iters: 100}}]
"""


def _matrix(tmp_path, text: str):
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return load_matrix(path)


def test_blocks_are_the_union_of_their_cells_with_the_top_level_as_defaults(tmp_path):
    from bench.runner.tasks import make_tasks
    matrix = _matrix(tmp_path, BLOCKS)
    keys = [c.key for c in make_plan(matrix, {}, None, None).cells]
    block_one = [f"imdn/x{s}/{m}/{b}/{d}" for s in (2, 4)
                 for m, b in (("fp", "FP"), ("minmax", "W4A4"), ('ptq4sr-250{"iters":250}', "W4A4"))
                 for d in ("Set5", "Set14")]
    assert keys == block_one + ["imdn/x2/minmax/W2A2/Set5", 'imdn/x2/ptq4sr-100{"iters":100}/W2A2/Set5']
    # The x2 model of both blocks is one spec: one FP model and one task per calibration, as in a plain matrix.
    cells = make_plan(matrix, {}, None, None).cells
    assert len({c.model for c in cells}) == 1
    tasks = make_tasks(cells, {c: "f" for c in cells})
    assert [len(t.cells) for t in tasks] == [2, 2, 2, 2, 2, 2, 1, 1]
    # --only slices across blocks
    only = make_plan(matrix, {"method": {"minmax"}, "dataset": {"Set5"}, "scale": {"2"}}, None, None).cells
    assert [c.key for c in only] == ["imdn/x2/minmax/W4A4/Set5", "imdn/x2/minmax/W2A2/Set5"]


def test_a_cell_two_blocks_both_give_is_run_once(tmp_path):
    text = BLOCKS.replace("    bits: [2]\n", "    bits: [2]\n    baselines: [fp]\n")
    keys = [c.key for c in make_plan(_matrix(tmp_path, text), {}, None, None).cells]
    assert keys.count("imdn/x2/fp/FP/Set5") == 1 and len(keys) == 14


@pytest.mark.parametrize("edit, message", [
    # one label, two sets of params: tables show one row per label and bits
    (("label: ptq4sr-100", "label: ptq4sr-250"),
     "label 'ptq4sr-250' in `blocks[1].methods` names ptq4sr {\"iters\":100}, but blocks[0] gives it ptq4sr "
     "{\"iters\":250}; give each variant its own label"),
    (("    bits: [2]\n", "    bits: [2]\n    calibration: {n: 4}\n"),
     "unknown key 'calibration' in blocks[1] (matrix-wide settings such as calibration stay at the top level)"),
    (("    bits: [2]\n", "    bits: [9]\n"), "bad bits 9 in `blocks[1].bits`"),
    (("  - models: [{name: imdn, scales: [2], weights: official}]",
      "  - models: [{name: imdn, scales: [2], weights: official, scope: fp-edges}]"),
     "two entries give imdn x2 other settings (cell imdn/x2/fp/FP/Set5: weights official, scope auto vs cell "
     "imdn/x2/minmax/W2A2/Set5: weights official, scope fp-edges)"),
    (("blocks:\n", "blocks: []\nunused:\n"), "unknown key 'unused' in the matrix"),
])
def test_block_mistakes_are_one_line_naming_the_entry(tmp_path, edit, message):
    text = BLOCKS.replace(*edit)
    assert text != BLOCKS
    with pytest.raises(ConfigError) as info:
        make_plan(_matrix(tmp_path, text), {}, None, None)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_one_model_twice_with_two_scopes_is_refused_not_merged(tmp_path):
    # Without blocks too: the cell key names the model, not its scope, so the two would overwrite each other.
    text = ("models:\n  - {name: imdn, scales: [2], weights: official, scope: ptq4sr}\n"
            "  - {name: imdn, scales: [2], weights: official, scope: fp-edges}\n"
            "datasets: [Set5]\nbits: [8]\nmethods: [minmax]\n")
    with pytest.raises(ConfigError, match="two entries give imdn x2 other settings .*scope ptq4sr vs cell "
                                          "imdn/x2/minmax/W8A8/Set5: weights official, scope fp-edges"):
        make_plan(_matrix(tmp_path, text), {}, None, None)
