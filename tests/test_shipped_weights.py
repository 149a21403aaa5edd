"""Weights are resolved by models/ alone: a new model with a shipped file runs in a matrix with no runner change."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import models.fetch
from bench.errors import CheckpointError
from bench.metrics.psnr_ssim import psnr_y
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from models import create_model
from models.fetch import resolve_weights_spec, weights_file_for_spec
from models.registry import MODEL_REGISTRY, ModelEntry

TOY = "toy-shipped"
MATRIX = """
name: toy
models:
  - {{name: {name}, scales: [2], weights: {weights}}}
datasets: [sample]
baselines: [fp]
"""


def build_toy(scale: int) -> nn.Module:
    """A 3x3 conv to 3*s*s channels and a pixel shuffle: with the shipped weights, nearest-neighbour upscaling."""
    return nn.Sequential(nn.Conv2d(3, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale)).eval()


def nearest_weights(scale: int) -> dict[str, torch.Tensor]:
    weight = torch.zeros(3 * scale * scale, 3, 3, 3)
    for c in range(3):
        weight[c * scale * scale:(c + 1) * scale * scale, c, 1, 1] = 1.0  # every phase copies the centre pixel
    return {"0.weight": weight, "0.bias": torch.zeros(3 * scale * scale)}


@pytest.fixture
def toy_model(tmp_path, monkeypatch):
    """`toy-shipped` registered as a models/ module would be, its file in a stand-in for models/weights/."""
    from safetensors.torch import save_file
    shipped = tmp_path / "weights"
    shipped.mkdir()
    save_file(nearest_weights(2), str(shipped / f"{TOY}_x2.safetensors"))
    monkeypatch.setattr(models.fetch, "SHIPPED_DIR", shipped)
    monkeypatch.setitem(MODEL_REGISTRY, TOY, ModelEntry(TOY, build_toy, (2,), "test model", ("ptq4sr",)))
    return shipped / f"{TOY}_x2.safetensors"


def nearest_psnr_on_sample(data_root) -> float:
    from bench.data.dataset import load_dataset
    values = [psnr_y(np.repeat(np.repeat(p.lr, 2, axis=0), 2, axis=1), p.hr, 2)
              for p in load_dataset("sample", 2, data_root=data_root)]
    return float(np.mean(values))


@pytest.mark.parametrize("weights", ["shipped", "default"])
def test_a_model_with_a_shipped_file_runs_in_a_matrix(toy_model, tmp_path, weights):
    matrix = tmp_path / "toy.yaml"
    matrix.write_text(MATRIX.format(name=TOY, weights=weights), encoding="utf-8")
    out = tmp_path / "run"
    stats = run_matrix(load_matrix(matrix), RunOptions(out=out, data_root=tmp_path / "data", device="cpu",
                                                       progress=False))
    assert (stats.total, stats.computed, stats.errors) == (1, 1, 0)
    record = json.loads((out / "records.jsonl").read_text().splitlines()[-1])
    # The FP cell is exactly nearest-neighbour upscaling: the shipped file was loaded, not a random init.
    assert round(record["psnr"], 2) == round(nearest_psnr_on_sample(tmp_path / "data"), 2) == 30.04
    assert record["weights"] == (str(toy_model) if weights == "shipped" else "default")


def test_weights_spec_resolution_is_in_models(toy_model, tmp_path):
    assert resolve_weights_spec(TOY, 2, "shipped") == toy_model
    assert resolve_weights_spec(TOY, 2, None) is None  # create_model's default: the shipped file
    assert weights_file_for_spec(TOY, 2, None) == toy_model and weights_file_for_spec(TOY, 2, "random") is None
    assert create_model(TOY, 2).weights_source == str(toy_model)
    assert resolve_weights_spec(TOY, 2, "w/toy_x{scale}.pt", tmp_path) == tmp_path / "w" / "toy_x2.pt"
    toy_model.unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_weights_spec(TOY, 2, "shipped")
    assert str(err.value).startswith(f"the project's {TOY} x2 weights {toy_model} are missing")
    assert weights_file_for_spec(TOY, 2, "shipped") is None
