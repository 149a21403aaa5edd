"""What a new user hits first: one-line errors instead of tracebacks, validation before side effects,
honest run counts, and the first-day options shared by every command (issue 16)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import bench
import methods
import models
from bench.cli import main
from bench.errors import BenchError, with_prefix
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix

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
