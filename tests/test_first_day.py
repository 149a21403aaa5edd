"""What a new user hits first: one-line errors instead of tracebacks, validation before side effects,
honest run counts, and the first-day options shared by every command (issue 16)."""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch

import bench
import methods
import models
from bench.cli import main
from bench.errors import BenchError, with_prefix
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.records import read_records

# IMDN x2 whose weights file is given by the test: the preflight builds the model before anything else.
ONE_MODEL = """\
name: one-model
models:
  - {{name: imdn, scales: [2], weights: "{weights}"}}
datasets: [sample]
methods: [minmax]
baselines: [fp]
calibration: {{n: 2, patch: 16, seed: 0, train_dir: sample-train}}
latency: {{runs: 0}}
"""


def _all_bench_error_types() -> list[type[BenchError]]:
    """Every BenchError subclass defined anywhere in the project's packages (imported here first)."""
    for package in (bench, models, methods):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            try:
                importlib.import_module(info.name)
            except ImportError:  # an optional extra that is not installed: its errors cannot be raised
                continue
    found, todo = [], [BenchError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(set(found), key=lambda c: c.__qualname__)


def _instance(cls: type[BenchError]) -> BenchError:
    """An instance of `cls` with message 'boom' and one extra attribute, whatever its __init__ takes."""
    exc = cls.__new__(cls)
    exc.args = ("boom",)
    exc.marker = cls.__name__
    return exc


def test_every_bench_error_type_is_known():
    names = {cls.__name__ for cls in _all_bench_error_types()}
    assert {"BenchError", "DataError", "CheckpointError", "ConfigError", "CheckpointMismatchError",
            "UnknownModelError"} <= names


@pytest.mark.parametrize("cls", _all_bench_error_types(), ids=lambda c: c.__name__)
def test_with_prefix_keeps_type_message_and_attributes(cls):
    wrapped = with_prefix(_instance(cls), "matrix m.yaml")
    assert type(wrapped) is cls and str(wrapped) == "matrix m.yaml: boom" and wrapped.marker == cls.__name__


@pytest.mark.parametrize("cls", _all_bench_error_types(), ids=lambda c: c.__name__)
def test_preflight_reraises_every_bench_error_with_its_type(cls, tmp_path, monkeypatch):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(ONE_MODEL.format(weights="random"), encoding="utf-8")

    def failing_build(*args, **kwargs):
        raise _instance(cls)

    monkeypatch.setattr("bench.runner.stages.build_model", failing_build)
    with pytest.raises(cls) as caught:
        run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "run", progress=False))
    assert type(caught.value) is cls and str(caught.value) == "matrix m.yaml: boom"
    assert caught.value.marker == cls.__name__


def test_a_wrong_checkpoint_in_a_matrix_is_one_line_exit_2(tmp_path, capsys):
    # CARN-M weights given for IMDN: CheckpointMismatchError, whose __init__ takes the key lists.
    torch.manual_seed(0)
    carn = models.create_model("carn-m", 2, weights="random")
    weights = tmp_path / "carn_as_imdn.pth"
    torch.save(carn.state_dict(), weights)
    matrix = tmp_path / "m.yaml"
    matrix.write_text(ONE_MODEL.format(weights=weights), encoding="utf-8")
    code = main(["run", "--matrix", str(matrix), "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bench: error: matrix m.yaml: ") and err.count("\n") == 1
    assert "Traceback" not in err and str(weights) in err


# ------------------------------------------------------------------------ validation before side effects

def _tiny_root(tmp_path: Path) -> Path:
    """A data root holding Set5/HR with one 60x60 image and no LR folder."""
    from PIL import Image
    root = tmp_path / "data"
    (root / "Set5" / "HR").mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (60, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "Set5" / "HR" / "img.png")
    return root


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--scale", "5"], "--scale 5: model imdn has no x5; its scales are 2, 3, 4 (see `bench models list`)"),
    (["--scale", "2", "--method", "minmax", "--bits", "-4", "--calib", "CALIB"],
     "--bits -4: use a bit-width from 2 to 8 (full precision is the model without --method)"),
    (["--scale", "2", "--method", "minmax", "--w-bits", "9", "--calib", "CALIB"],
     "--w-bits 9: use a bit-width from 2 to 8 (full precision is the model without --method)"),
    (["--scale", "2", "--method", "nosuch", "--calib", "CALIB"],
     "unknown method 'nosuch'; known methods: KNOWN (see `bench methods list`, or load your own with --plugin FILE.py)"),
    (["--scale", "2", "--method", "minmax"],
     "--method needs --calib DIR: a folder of HR training images for the calibration patches (never a test set)"),
])
def test_eval_validates_the_request_before_writing_lr_images(extra, message, tmp_path, capsys):
    root = _tiny_root(tmp_path)
    before = _tree(root)
    args = [a.replace("CALIB", str(root / "Set5" / "HR")) for a in extra]
    code = main(["eval", "--model", "imdn", "--dataset", "Set5", "--data-root", str(root), "--weights", "random",
                 "--threads", "1", "--no-lpips", *args])
    assert _tree(root) == before  # no LR_bicubic/X5 (or any other file) was written
    from methods.registry import METHOD_REGISTRY  # other test modules may have registered plugin methods
    message = message.replace("KNOWN", ", ".join(sorted(METHOD_REGISTRY)))
    assert (code, capsys.readouterr().err) == (2, f"bench: error: {message}\n")


def test_quantize_names_the_bits_flag_before_drawing_patches(tmp_path, capsys):
    root = _tiny_root(tmp_path)
    code = main(["quantize", "--model", "imdn", "--scale", "2", "--weights", "random", "--method", "minmax",
                 "--a-bits", "1", "--calib", str(root / "Set5" / "HR"), "--threads", "1", "--out", str(tmp_path / "q.pt")])
    err = capsys.readouterr().err
    assert (code, err) == (2, "bench: error: --a-bits 1: use a bit-width from 2 to 8 (full precision is the model "
                              "without --method)\n")
    assert not (tmp_path / "q.pt").exists()


# ---------------------------------------------------------------------- --weights-dir and --threads

@pytest.fixture
def weights_folder(tmp_path) -> Path:
    """A --weights-dir holding a (random) IMDN x2 checkpoint under its official file name, one folder down."""
    torch.manual_seed(0)
    folder = tmp_path / "weights"
    (folder / "imdn").mkdir(parents=True)
    torch.save(models.create_model("imdn", 2, weights="random").state_dict(), folder / "imdn" / "IMDN_x2.pth")
    return folder


def test_eval_finds_the_official_file_in_weights_dir(weights_folder, tmp_path, capsys):
    root = _tiny_root(tmp_path)
    base = ["eval", "--model", "imdn", "--scale", "2", "--dataset", "Set5", "--data-root", str(root),
            "--weights-dir", str(weights_folder), "--threads", "1", "--no-lpips", "--json", "--device", "cpu"]
    assert main(base) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert main([*base, "--weights", "imdn/IMDN_x2.pth"]) == 0  # relative to --weights-dir
    relative = json.loads(capsys.readouterr().out)
    assert by_name["weights"] == relative["weights"] == str(weights_folder / "imdn" / "IMDN_x2.pth")
    assert by_name["psnr"] == relative["psnr"]


def test_quantize_accepts_weights_dir_and_threads(weights_folder, tmp_path, capsys):
    root = _tiny_root(tmp_path)
    out = tmp_path / "q.pt"
    code = main(["quantize", "--model", "imdn", "--scale", "2", "--weights-dir", str(weights_folder), "--method",
                 "minmax", "--bits", "8", "--calib", str(root / "Set5" / "HR"), "--calib-n", "2", "--calib-patch", "16",
                 "--threads", "1", "--no-progress", "--out", str(out)])
    assert code == 0 and torch.get_num_threads() == 1
    meta = torch.load(out, weights_only=False)["meta"]
    assert meta["weights"] == str(weights_folder / "imdn" / "IMDN_x2.pth")


def test_models_list_shows_weights_found_in_weights_dir(weights_folder, capsys):
    assert main(["models", "list", "--weights-dir", str(weights_folder), "--threads", "1"]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "in --weights-dir: imdn/IMDN_x2.pth" in rows["imdn", "x2"]
    assert "in --weights-dir" not in rows["imdn", "x4"]


# --------------------------------------------------------------------------------------- test isolation

def test_the_session_check_names_files_written_into_user_folders(tmp_path):
    from conftest import _snapshot, user_folder_changes
    (tmp_path / "kept.txt").write_text("a")
    (tmp_path / "edited.txt").write_text("b")
    before = {str(tmp_path): _snapshot(tmp_path)}
    (tmp_path / "new" / "calib.pt").parent.mkdir()
    (tmp_path / "new" / "calib.pt").write_text("c")
    os.utime(tmp_path / "edited.txt", ns=(1, 1))
    changes = user_folder_changes(before, {str(tmp_path): _snapshot(tmp_path)})
    assert changes == [f"{tmp_path / 'new' / 'calib.pt'} (written)", f"{tmp_path / 'edited.txt'} (modified)"]


def test_skips_say_what_the_shared_folder_holds_and_how_to_supply_it(tmp_path):
    from conftest import skip_reason
    reason = skip_reason(tmp_path / "absent")
    assert reason.startswith(f"{tmp_path / 'absent'} not found. The shared reference folder")
    for words in ("test sets", "official checkpoints", "training images", "BENCH_SHARED", "--data-root",
                  "--weights-dir"):
        assert words in reason


# ------------------------------------------------------------------------------- done / planned counts

# 2 baselines + 2 methods on two crops of the embedded photos: 4 cells of a fraction of a second.
SMALL = """\
name: small
models:
  - {name: imdn, scales: [2], weights: random}
datasets:
  - {name: sample, crop: 16, max_images: 2}
methods: [minmax, percentile]
baselines: [fp, bicubic]
calibration: {n: 2, patch: 16, seed: 0, train_dir: sample-train}
latency: {runs: 0}
cost: {lr_size: 16}
"""


def _results_rows(results_dir: Path, capsys) -> dict[str, list[str]]:
    assert main(["results", "--results-dir", str(results_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    return {line.split()[0]: line.split() for line in lines[2:]}


def test_results_show_done_of_planned_for_a_killed_run(tmp_path, capsys):
    matrix = tmp_path / "small.yaml"
    matrix.write_text(SMALL, encoding="utf-8")
    out = tmp_path / "results" / "small"
    stats = run_matrix(load_matrix(matrix), RunOptions(out=out, progress=False))
    assert (stats.total, stats.errors) == (4, 0)
    row = _results_rows(tmp_path / "results", capsys)["small"]
    assert row[1:6] == ["4", "/", "4", "0", "finished"]

    records = out / "records.jsonl"
    lines = records.read_text(encoding="utf-8").splitlines(keepends=True)
    records.write_text("".join(lines[:2]), encoding="utf-8")  # killed after two cells
    row = _results_rows(tmp_path / "results", capsys)["small"]
    assert row[1:6] == ["2", "/", "4", "0", "incomplete"]


# ------------------------------------------------------------------------------ 2DQuant reuses DOBI

TWO_STAGE = """\
name: two-stage
models:
  - {{name: imdn, scales: [2], weights: "{weights}"}}
datasets:
  - {{name: sample, crop: 16, max_images: 2}}
methods:
  - {{name: dobi, params: {{variant: paper}}}}
  - {{name: 2dquant, params: {{iters: 2, batch: 2, patch: 16}}}}
calibration: {{n: 2, patch: 16, seed: 0, train_dir: sample-train}}
latency: {{runs: 0}}
cost: {{lr_size: 16}}
"""


def test_2dquant_reuses_the_dobi_bounds_of_the_same_run(weights_folder, tmp_path, monkeypatch):
    from methods.dobi import DOBI
    searches = []
    original = DOBI.calibrate

    def counting(self, qmodel, ctx):
        searches.append(self.params.variant)
        return original(self, qmodel, ctx)

    monkeypatch.setattr(DOBI, "calibrate", counting)
    matrix = tmp_path / "two.yaml"
    matrix.write_text(TWO_STAGE.format(weights=weights_folder / "imdn" / "IMDN_x2.pth"), encoding="utf-8")
    run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "both", progress=False))
    assert searches == ["paper"]  # the DOBI cell searched; 2DQuant's stage one reused its bounds
    both = {r["method"]: r for r in read_records(tmp_path / "both" / "records.jsonl")}
    stage_one = both["2dquant"]["method_description"]["stage_one"]
    assert stage_one["reused"] is True and stage_one["source"]["calib_key"] == "imdn/x2/dobi{\"variant\":\"paper\"}/W4A4"
    assert stage_one["method"] == "dobi" and stage_one["params"] == {"variant": "paper", "K": 100}

    # Alone, 2DQuant searches itself, and ends with exactly the same bounds and PSNR.
    run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "alone", progress=False, only={"method": {"2dquant"}}))
    assert searches == ["paper", "paper"]
    alone = {r["method"]: r for r in read_records(tmp_path / "alone" / "records.jsonl")}
    assert alone["2dquant"]["method_description"]["stage_one"]["reused"] is False
    assert (alone["2dquant"]["psnr"], alone["2dquant"]["ssim"]) == (both["2dquant"]["psnr"], both["2dquant"]["ssim"])


# -------------------------------------------------------------------------------- LPIPS is an extra

def test_lpips_without_pyiqa_says_how_to_install_it(monkeypatch):
    import importlib.util
    import warnings

    from bench.metrics import lpips
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyiqa" else real(name, *a))
    lpips.reset_warning()
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = [lpips.LPIPSMetric()(image, image, 2), lpips.LPIPSMetric()(image, image, 2)]
    lpips.reset_warning()
    assert values == [None, None] and not lpips.lpips_available()
    assert [str(w.message) for w in caught] == [lpips.PYIQA_MISSING]
    assert "pip install -e '.[lpips]'" in lpips.PYIQA_MISSING


# ------------------------------------------------------------------------- matrices: YAML and datasets

@pytest.mark.parametrize(("text", "message"), [
    ("name: x\nmodels: [imdn]\ndatasets: [Set5]\nbits: [4, 2\nmethods: [minmax]\n",
     ":4: invalid YAML: the list opened with `[` on line 4 is not closed (the parser stopped on line 5: expected ',' "
     "or ']', but got ':'); close it on line 4"),
    ("name: x\nmodels:\n  - {name: imdn\ndatasets: [Set5]\n",
     ":3: invalid YAML: the mapping opened with `{` on line 3 is not closed (the parser stopped on line 4: expected "
     "',' or '}', but got ':'); close it on line 3"),
    ("name: \"x\nmodels: [imdn]\n", ":1: invalid YAML: the quoted string on line 1 is not closed (the parser stopped "
                                    "on line 3: found unexpected end of stream); close it on line 1"),
    ("name: x\n  bad: indent\n", ":2: invalid YAML (mapping values are not allowed here); fix the syntax at that line"),
])
def test_broken_yaml_names_the_line_of_the_fault(text, message, tmp_path):
    from bench.errors import ConfigError
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_matrix(path)
    assert str(caught.value) == f"{path}{message}"


CUSTOM_SET = """\
name: custom
models:
  - {{name: imdn, scales: [2], weights: random}}
datasets: [{dataset}]
baselines: [bicubic]
latency: {{runs: 0}}
"""


def test_a_dataset_folder_that_works_in_eval_works_in_a_matrix(tmp_path, capsys):
    root = _tiny_root(tmp_path)
    (root / "Set5").rename(root / "MyPhotos")
    assert main(["eval", "--model", "imdn", "--scale", "2", "--weights", "random", "--dataset", "MyPhotos",
                 "--data-root", str(root), "--no-lpips", "--threads", "1", "--json"]) == 0
    eval_record = json.loads(capsys.readouterr().out)
    matrix = tmp_path / "custom.yaml"
    matrix.write_text(CUSTOM_SET.format(dataset="MyPhotos"), encoding="utf-8")
    stats = run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "run", data_root=root, progress=False))
    record = read_records(tmp_path / "run" / "records.jsonl")[0]
    assert (stats.errors, record["dataset"], record["images"]) == (0, "MyPhotos", eval_record["images"])

    matrix.write_text(CUSTOM_SET.format(dataset="Set6"), encoding="utf-8")
    with pytest.raises(BenchError) as caught:
        run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "run6", data_root=root, progress=False))
    assert str(caught.value).startswith(f"matrix custom.yaml: unknown dataset 'Set6': no folder {root / 'Set6' / 'HR'}")


# -------------------------------------------------------------------------- the full matrix, first day

ALL_MODELS = """\
name: all-models
models: all
scales: [2]
datasets:
  - {name: sample, crop: 16, max_images: 1}
baselines: [bicubic]
latency: {runs: 0}
all_models_weights: default
"""


def test_an_all_matrix_says_what_it_skips_before_it_starts(tmp_path):
    matrix = tmp_path / "all.yaml"
    matrix.write_text(ALL_MODELS, encoding="utf-8")
    out = tmp_path / "run"
    heard = []

    def announce(note: str) -> None:
        heard.append((note, (out / "records.jsonl").exists()))

    stats = run_matrix(load_matrix(matrix), RunOptions(out=out, progress=False, announce=announce,
                                                       only={"model": {"imdn", "swinir-light"}}))
    # The test cache holds no official IMDN checkpoint; SwinIR-light has the project's shipped weights.
    assert len(heard) == 1 and heard[0][0].startswith("skipped (not available): imdn x2: no weights for imdn x2")
    assert heard[0][1] is False  # told before the first cell was written
    assert (stats.total, stats.errors, [s.split(":")[0] for s in stats.skipped]) == (1, 0, ["imdn x2"])


def test_calibration_without_images_says_which_images_and_where_from(tmp_path):
    body = ONE_MODEL.format(weights="random").replace("calibration: {n: 2, patch: 16, seed: 0, train_dir: sample-train}",
                                                      "calibration: {n: 2, patch: 16, seed: 0}")
    matrix = tmp_path / "m.yaml"
    matrix.write_text(body, encoding="utf-8")
    with pytest.raises(BenchError) as caught:
        run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "run", progress=False))
    assert str(caught.value) == (
        "matrix m.yaml: calibration needs HR training images, never a test set: pass --calib DIR (or set "
        "BENCH_CALIB_DIR), e.g. a folder of T91 + BSD200 or DIV2K (the paper's) images; or set `calibration: "
        "{train_dir: sample-train}` in the matrix to calibrate on the nine embedded scikit-image photos, as the demo does")
