"""bench.train: loss goes down, resume is bit-identical, export round-trips through create_model, --init skips
mismatched upsampler tensors. Tiny generated images and a tiny registered CNN keep this under a minute."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bench.train import (
    PatchBatcher,
    TrainConfig,
    init_from,
    list_images,
    lr_factor,
    make_pairs,
    read_checkpoint,
    split_holdout,
    train,
)
from models import create_model
from models.registry import MODEL_REGISTRY, register_model

TINY = "tiny-train-test"


class TinySR(nn.Module):
    """Two convs, a dropout (so that resume must restore the torch RNG) and a pixel-shuffle upsampler."""

    def __init__(self, scale: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.upsample = nn.Sequential(nn.Conv2d(8, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))
        self.scale = scale

    def forward(self, x):
        base = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return base + self.upsample(self.body(x))


if TINY not in MODEL_REGISTRY:
    register_model(TINY, scales=(2, 3, 4), description="test-only tiny CNN")(lambda scale: TinySR(scale).eval())


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Ten 72x64 images of smooth gradients plus a little texture (seeded), in two sub-folders."""
    root = tmp_path_factory.mktemp("train-images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:72, 0:64].astype(np.float32)
    for i in range(10):
        fx, fy = rng.uniform(0.05, 0.3, size=2)
        base = 127 + 80 * np.sin(fx * xx + i) * np.cos(fy * yy)
        img = np.stack([base, base[::-1], 255 - base], -1) + rng.normal(0, 4, (72, 64, 3))
        sub = root / ("a" if i < 5 else "b")
        sub.mkdir(exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(sub / f"img{i}.png")
    return root


def _cfg(image_dir, out, **kw) -> TrainConfig:
    base = dict(model=TINY, scale=2, train_dir=image_dir, iters=6, batch=4, patch=16, lr=1e-3,
                out_dir=out, ckpt_every=3, val_every=2, seed=3, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _model_from(ckpt_path, scale=2, name=TINY):
    from bench.train import load_weights_state
    model = create_model(name, scale, weights="random")
    load_weights_state(model, read_checkpoint(ckpt_path)["model"], ckpt_path)
    return model.eval()


def test_holdout_is_the_calibration_val_split(image_dir):
    paths = list_images(image_dir)
    train_paths, val_paths = split_holdout(paths)
    assert [p.name for p in val_paths] == ["img9.png"]  # every 10th image, as bench.data.calib's "val" split
    assert len(train_paths) == 9 and not set(val_paths) & set(train_paths)


def test_patches_are_aligned_with_imresize_lr(image_dir):
    from bench.data.imresize import imresize
    pairs = make_pairs(list_images(image_dir)[:1], scale=2)
    assert pairs[0].lr.shape == (36, 32, 3)
    batcher = PatchBatcher(pairs, scale=2, patch=12, batch=16, seed=0)
    lr, hr = batcher.next_batch()
    assert tuple(lr.shape) == (16, 3, 12, 12) and tuple(hr.shape) == (16, 3, 24, 24)
    # Every LR patch is exactly the MATLAB-bicubic downscale of its HR patch, away from the crop borders (the
    # antialiased kernel at x1/2 spans 8 HR taps). imresize rounds between its two 1-D passes, so a transposed
    # patch matches the downscale done in the other order (transpose, resize, transpose back).
    interior = (slice(3, -3), slice(3, -3))
    for i in range(16):
        hr_u8 = (hr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        lr_u8 = (lr[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        direct = imresize(hr_u8, 0.5)[interior]
        swapped = imresize(np.ascontiguousarray(hr_u8.transpose(1, 0, 2)), 0.5).transpose(1, 0, 2)[interior]
        assert np.array_equal(direct, lr_u8[interior]) or np.array_equal(swapped, lr_u8[interior]), i


def test_lr_schedule_values():
    cfg = TrainConfig(model=TINY, scale=2, train_dir=None, iters=100, lr=2e-4, warmup=10, min_lr=0.0)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.0, abs=1e-12)
    multi = TrainConfig(model=TINY, scale=2, train_dir=None, iters=100, schedule="multistep")
    assert [lr_factor(s, multi) for s in (49, 50, 80, 90, 95)] == [1.0, 0.5, 0.25, 0.125, 0.0625]


def test_training_reduces_loss_on_a_fixed_batch(image_dir, tmp_path):
    pairs = make_pairs(list_images(image_dir), scale=2)
    lr_b, hr_b = PatchBatcher(pairs, scale=2, patch=16, batch=8, seed=123).next_batch()
    torch.manual_seed(3)
    with torch.no_grad():
        before = F.l1_loss(create_model(TINY, 2, weights="random").eval()(lr_b), hr_b).item()
    result = train(_cfg(image_dir, tmp_path, iters=40, val_every=20, ckpt_every=20, lr=3e-3))
    with torch.no_grad():
        after = F.l1_loss(_model_from(result.checkpoint)(lr_b), hr_b).item()
    assert result.iteration == 40 and result.stopped_by == "iters"
    assert after < 0.5 * before, (before, after)
    assert result.last_val_psnr is not None and result.best_val_psnr >= result.last_val_psnr - 1e-9


def test_resume_is_bit_identical_to_an_uninterrupted_run(image_dir, tmp_path):
    full = train(_cfg(image_dir, tmp_path / "full"))
    part = train(_cfg(image_dir, tmp_path / "part", stop_at=3))
    assert part.iteration == 3 and part.stopped_by == "stop_at"
    resumed = train(_cfg(image_dir, tmp_path / "part", resume=part.checkpoint))
    assert resumed.iteration == 6
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(resumed.checkpoint)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 6
    assert a["last_val_psnr"] == b["last_val_psnr"]


def test_time_limit_stops_and_checkpoints(image_dir, tmp_path):
    result = train(_cfg(image_dir, tmp_path, iters=10_000, time_limit_min=0.0))
    assert result.stopped_by == "time_limit" and result.iteration == 1
    assert read_checkpoint(result.checkpoint)["iteration"] == 1


def test_export_round_trips_through_create_model(image_dir, tmp_path):
    from safetensors import safe_open
    result = train(_cfg(image_dir, tmp_path, model="swinir-light", iters=2, batch=2, patch=8,
                        val_every=2, val_crop=16, export=tmp_path / "swinir-light_x2.safetensors"))
    path = result.exported
    assert path.stat().st_size < 4_000_000
    with safe_open(str(path), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["iterations"] == "2" and meta["model"] == "swinir-light" and meta["scale"] == "2"
    assert not [k for k in keys if k.endswith(("attn_mask", "relative_position_index"))]
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _model_from(result.checkpoint, name="swinir-light")(x)
        loaded = create_model("swinir-light", 2, weights=path)(x)
    assert torch.equal(expected, loaded)


def test_init_skips_mismatched_upsampler_and_names_it(tmp_path):
    torch.manual_seed(0)
    src = create_model("swinir-light", 2, weights="random")
    torch.save({"model": src.state_dict()}, tmp_path / "x2.pt")
    dst = create_model("swinir-light", 3, weights="random")
    report = init_from(dst, tmp_path / "x2.pt")
    assert [s.split(" ")[0] for s in report.skipped] == ["upsample.0.weight", "upsample.0.bias"]
    assert "(shape (12, 60, 3, 3) -> (27, 60, 3, 3))" in report.skipped[0]
    n_params = sum(1 for k in dst.state_dict() if not k.endswith(("attn_mask", "relative_position_index")))
    assert len(report.loaded) == n_params - 2
    assert torch.equal(dst.state_dict()["conv_first.weight"], src.state_dict()["conv_first.weight"])


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from bench.cli import main
    assert main(["train", "--model", TINY, "--scale", "2", "--train", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: training folder") and "\n" not in err
    assert main(["train", "--export-from", str(tmp_path / "none.pt"), "--export", str(tmp_path / "w.safetensors")]) == 2
    assert "checkpoint" in capsys.readouterr().err
