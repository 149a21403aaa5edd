"""Inference (padding, cropping, tiling), evaluate(), and `bench eval`: IMDN reproduces its published Set5 numbers."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.cli import main
from bench.evaluate import evaluate
from bench.inference import pad_to_multiple, upscale
from bench.metrics.psnr_ssim import psnr_y, ssim_y


class NearestUp(nn.Module):
    """A stand-in SR model: nearest-neighbour upscaling; optionally demands sides divisible by `pad_multiple`."""

    def __init__(self, scale: int, pad_multiple: int = 1, pad_mode: str = "flip_concat") -> None:
        super().__init__()
        self.scale, self.pad_multiple, self.pad_mode = scale, pad_multiple, pad_mode
        self.seen: list[tuple[int, int]] = []
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        assert x.shape[-2] % self.pad_multiple == 0 and x.shape[-1] % self.pad_multiple == 0
        return F.interpolate(x, scale_factor=self.scale, mode="nearest") + self.dummy


def _nearest(lr: np.ndarray, s: int) -> np.ndarray:
    return lr.repeat(s, axis=0).repeat(s, axis=1)


# ---------------------------------------------------------------------------------------------- inference

def test_flip_concat_padding_mirrors_below_and_right():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    # rows: 0 1 2 | 2 1 0 | 0 1 (flip appended, repeated for a tiny image), then the same for columns.
    assert padded[0, 0, :, 0].tolist() == [0, 4, 8, 8, 4, 0, 0, 4]
    assert padded[0, 0, 0].tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    assert pad_to_multiple(torch.zeros(1, 3, 16, 8), 8).shape == (1, 3, 16, 8)  # already a multiple: unchanged


def test_upscale_pads_only_when_needed_and_crops_back():
    lr = np.random.default_rng(0).integers(0, 256, (21, 16, 3)).astype(np.uint8)
    model = NearestUp(2, pad_multiple=8)
    sr = upscale(model, lr, 2, device="cpu")
    assert model.seen == [(24, 16)]
    assert sr.dtype == np.uint8 and np.array_equal(sr, _nearest(lr, 2))
    model.seen.clear()
    upscale(model, lr[:16], 2, device="cpu")
    assert model.seen == [(16, 16)]


def test_tiled_inference_matches_whole_image_for_a_local_model():
    lr = np.random.default_rng(1).integers(0, 256, (50, 37, 3)).astype(np.uint8)
    model = NearestUp(3, pad_multiple=4)
    whole = upscale(model, lr, 3, device="cpu")
    model.seen.clear()
    tiled = upscale(model, lr, 3, device="cpu", tile=16)
    assert len(model.seen) > 4 and np.array_equal(tiled, whole)


def test_evaluate_means_and_outputs(benchmark_root):
    from bench.data.dataset import load_dataset
    ds = load_dataset("Set5", 4, data_root=benchmark_root)
    result = evaluate(NearestUp(4), ds, 4, device="cpu", lpips=False, progress=False, return_outputs=True)
    assert result.images == 5 and [r.name for r in result.per_image] == ["baby", "bird", "butterfly", "head", "woman"]
    pair = ds[2]
    sr = _nearest(pair.lr, 4)
    assert np.array_equal(result.outputs["butterfly"], sr)
    assert result.per_image[2].psnr == pytest.approx(psnr_y(sr, pair.hr, 4), abs=1e-12)
    assert result.per_image[2].ssim == pytest.approx(ssim_y(sr, pair.hr, 4), abs=1e-12)
    assert result.psnr == pytest.approx(np.mean([r.psnr for r in result.per_image]), abs=1e-12)
    assert result.lpips is None and result.tiled is None and not result.is_subset and result.scale == 4


# ------------------------------------------------------------------------------------- IMDN, published

def _published(shared_dir, model: str, dataset: str, scale: int) -> tuple[float, float]:
    with open(shared_dir / "reference" / "published-fp.csv", newline="") as f:
        for row in csv.DictReader(f):
            if (row["model"], row["dataset"], int(row["scale"])) == (model, dataset, scale):
                return float(row["psnr"]), float(row["ssim"])
    raise KeyError((model, dataset, scale))


@pytest.mark.parametrize("scale", [2, 3])
def test_imdn_reproduces_published_set5(shared_dir, benchmark_root, weights_dir, scale):
    from bench.data.dataset import load_dataset
    from models import create_model

    model = create_model("imdn", scale, weights=weights_dir / "imdn" / f"IMDN_x{scale}.pth")
    result = evaluate(model, load_dataset("Set5", scale, data_root=benchmark_root), scale, device="cpu",
                      lpips=False, progress=False)
    psnr, ssim = _published(shared_dir, "IMDN", "Set5", scale)
    # Measured: 37.9960 / 0.96049 (x2), 34.3597 / 0.92698 (x3).
    assert round(result.psnr, 2) == psnr
    assert round(result.ssim, 4) == ssim


# ----------------------------------------------------------------------------------------- bench eval

def test_bench_eval_table_reproduces_published_set5_x4(shared_dir, benchmark_root, weights_dir, capsys):
    code = main(["eval", "--model", "imdn", "--scale", "4", "--dataset", "Set5", "--data-root", str(benchmark_root),
                 "--weights", str(weights_dir / "imdn" / "IMDN_x4.pth"), "--device", "cpu", "--no-lpips"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("imdn x4 on Set5, 5 images, cpu")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:]}
    assert list(rows) == ["baby", "bird", "butterfly", "head", "woman", "mean"]
    # Measured: 32.2096 / 0.89476; published 32.21 / 0.8948.
    assert (float(rows["mean"][0]), float(rows["mean"][1])) == _published(shared_dir, "IMDN", "Set5", 4)
    assert rows["mean"][2] == "-"  # --no-lpips


def test_bench_eval_json_on_the_sample_set(tmp_path, capsys):
    code = main(["eval", "--model", "imdn", "--scale", "4", "--dataset", "sample", "--weights", "random",
                 "--data-root", str(tmp_path), "--device", "cpu", "--no-lpips", "--json", "--tile", "40"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images"] == 5 and len(record["per_image"]) == 5 and record["lpips"] is None
    assert record["psnr"] == pytest.approx(np.mean([r["psnr"] for r in record["per_image"]]), abs=1e-9)
    assert record["dataset"] == "sample" and record["scale"] == 4
    assert record["tiled"] == {"tile": 40, "overlap": 10}
    assert record["weights"] == "random"


def test_bench_eval_json_names_the_shipped_default_weights(tmp_path, capsys):
    from models.fetch import shipped_weights_path
    code = main(["eval", "--model", "swinir-light", "--scale", "4", "--dataset", "sample", "--data-root",
                 str(tmp_path), "--device", "cpu", "--no-lpips", "--json"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["weights"] == str(shipped_weights_path("swinir-light", 4))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error: ")
    return err[0]


def test_bench_eval_bad_inputs_exit_2_with_one_line(benchmark_root, tmp_path, capsys):
    base = ["eval", "--model", "imdn", "--scale", "2", "--weights", "random", "--device", "cpu", "--no-lpips"]

    assert main(base + ["--dataset", "Set6", "--data-root", str(tmp_path)]) == 2
    assert "unknown dataset 'Set6'" in _one_error_line(capsys)

    shutil.copytree(benchmark_root / "Set5" / "HR", tmp_path / "Set5" / "HR")
    assert main(base + ["--dataset", "Set5", "--data-root", str(tmp_path), "--no-generate-lr"]) == 2
    assert "bench data make-lr" in _one_error_line(capsys)

    shutil.copytree(benchmark_root / "Set5" / "LR_bicubic" / "X2", tmp_path / "Set5" / "LR_bicubic" / "X2")
    head = tmp_path / "Set5" / "HR" / "head.png"
    head.write_bytes(head.read_bytes()[:2000])  # found at load time: no model runs
    assert main(base + ["--dataset", "Set5", "--data-root", str(tmp_path), "--json"]) == 2
    line = _one_error_line(capsys)
    assert str(head) in line and "truncated or corrupt" in line


def test_bench_eval_quantized_file_and_method_agree(train_root, tmp_path, capsys):
    # `bench quantize` + `bench eval --quantized` must score exactly what `bench eval --method` does in one go
    # (same method, bits, calibration patches and seed).
    common = ["--model", "imdn", "--scale", "4", "--weights", "random"]
    calib = ["--calib", str(train_root / "T91"), "--calib-n", "4", "--calib-patch", "32"]
    data = ["--dataset", "sample", "--data-root", str(tmp_path), "--device", "cpu", "--no-lpips", "--json"]
    torch.manual_seed(0)
    qfile = tmp_path / "imdn_w8a8.pt"
    assert main(["quantize", *common, "--method", "minmax", "--bits", "8", *calib, "--no-progress",
                 "--out", str(qfile)]) == 0
    capsys.readouterr()
    torch.manual_seed(0)  # "random" weights: the same initialisation in both runs
    assert main(["eval", *common, *data, "--quantized", str(qfile)]) == 0
    from_file = json.loads(capsys.readouterr().out)
    torch.manual_seed(0)
    assert main(["eval", *common, *data, "--method", "minmax", "--bits", "8", *calib]) == 0
    in_one_go = json.loads(capsys.readouterr().out)
    assert from_file["quantization"]["quantized"] == str(qfile)
    assert in_one_go["quantization"]["w_bits"] == 8 and in_one_go["quantization"]["a_bits"] == 8
    assert [r["psnr"] for r in from_file["per_image"]] == [r["psnr"] for r in in_one_go["per_image"]]

    assert main(["eval", *common, *data, "--quantized", str(qfile), "--method", "minmax"]) == 2
    assert "not both" in _one_error_line(capsys)
