"""FSRCNN: the sub-pixel form of its deconvolution, the luma-only path, and the shipped weights on Set5."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.cli import main
from bench.errors import ConfigError
from bench.quant.scopes import resolve_scope
from models import create_model
from models.fetch import shipped_weights_path
from models.fsrcnn import SubPixelDeconv, deconv_to_subpixel, rgb_to_ycbcr, ycbcr_to_rgb

# Measured with `bench eval --model fsrcnn --scale S --dataset Set5 --data-root ../shared/data/benchmark`
# (official MATLAB-bicubic LR, Y channel, border = scale); see models/weights/MODEL_CARD.md.
SHIPPED_SET5 = {2: 36.05, 3: 32.12, 4: 29.81}


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_subpixel_conv_equals_the_9x9_deconvolution(scale, one_thread):
    torch.manual_seed(scale)
    deconv = nn.ConvTranspose2d(56, 1, 9, stride=scale, padding=4, output_padding=scale - 1)
    subpixel = SubPixelDeconv(56, scale)
    deconv_to_subpixel(deconv, subpixel)
    x = torch.randn(2, 56, 11, 7)
    with torch.no_grad():
        expected, got = deconv(x), subpixel(x)
    assert got.shape == expected.shape == (2, 1, 11 * scale, 7 * scale)
    assert float((got - expected).abs().max()) < 1e-5


def test_architecture_is_the_published_configuration():
    model = create_model("fsrcnn", 3, weights="random")
    convs = [(name, tuple(m.weight.shape)) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs == [("feature.0", (56, 1, 5, 5)), ("shrink.0", (12, 56, 1, 1)), ("mapping.0.0", (12, 12, 3, 3)),
                     ("mapping.1.0", (12, 12, 3, 3)), ("mapping.2.0", (12, 12, 3, 3)), ("mapping.3.0", (12, 12, 3, 3)),
                     ("expand.0", (56, 12, 1, 1)), ("deconv.conv", (9, 56, 5, 5))]
    assert sum(isinstance(m, nn.PReLU) for m in model.modules()) == 7
    # The default scope quantizes every layer, the deconvolution included (it is a Conv2d).
    assert resolve_scope(model).name == "ptq4sr"


def test_network_predicts_luma_and_chroma_is_bicubic(one_thread):
    torch.manual_seed(0)
    model = create_model("fsrcnn", 2, weights="random")
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        out = rgb_to_ycbcr(model(x))
        y_net = model.deconv(model.expand(model.mapping(model.shrink(model.feature(rgb_to_ycbcr(x)[:, :1])))))
    chroma = F.interpolate(rgb_to_ycbcr(x)[:, 1:], scale_factor=2, mode="bicubic", align_corners=False)
    assert float((out[:, :1] - y_net).abs().max()) < 1e-5 and float((out[:, 1:] - chroma).abs().max()) < 1e-5
    assert float((ycbcr_to_rgb(rgb_to_ycbcr(x)) - x).abs().max()) < 1e-5


@pytest.mark.parametrize("scale", [2])
def test_shipped_weights_on_set5(scale, benchmark_root, capsys):
    path = shipped_weights_path("fsrcnn", scale)
    assert path.is_file() and path.stat().st_size < 100_000
    args = ["eval", "--model", "fsrcnn", "--scale", str(scale), "--dataset", "Set5", "--data-root",
            str(benchmark_root), "--device", "cpu", "--no-lpips", "--json", "--threads", "1"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["weights"] == str(path)
    assert f"{record['psnr']:.2f}" == f"{SHIPPED_SET5[scale]:.2f}"
    assert np.isfinite(record["ssim"]) and record["ssim"] > 0.95


# ------------------------------------------------------------------------ training options FSRCNN needs

def test_l1_y_loss_is_l1_on_the_luma_the_psnr_uses():
    from bench.train import training_loss
    sr, hr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.rand(2, 3, 8, 8)
    luma = lambda t: (t * torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255).sum(1)  # noqa: E731
    assert float(training_loss(sr, hr, "l1-y")) == pytest.approx(float((luma(sr) - luma(hr)).abs().mean()), rel=1e-6)
    assert float(training_loss(sr, hr, "l1")) == pytest.approx(float((sr - hr).abs().mean()), rel=1e-6)


def test_train_only_fine_tunes_the_deconvolution_and_freezes_the_rest(tmp_path, one_thread):
    from PIL import Image

    from bench.train import TrainConfig, read_checkpoint, train
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    torch.manual_seed(0)
    start = create_model("fsrcnn", 3, weights="random").state_dict()
    cfg = TrainConfig(model="fsrcnn", scale=3, train_dir=tmp_path, val_dir=tmp_path, iters=3, batch=2, patch=12,
                      lr=1e-2, loss="l1-y", train_only=("deconv.*",), out_dir=tmp_path / "out", progress=False)
    trained = read_checkpoint(train(cfg).checkpoint)
    changed = sorted(k for k, v in trained["model"].items() if not torch.equal(v, start[k]))
    assert changed == ["deconv.conv.bias", "deconv.conv.weight"]
    assert trained["recipe"]["train_only"] == ["deconv.*"] and trained["recipe"]["loss"] == "l1-y"
    with pytest.raises(ConfigError, match=r"--train-only nothing\.\* matches no parameter of the model"):
        train(TrainConfig(model="fsrcnn", scale=3, train_dir=tmp_path, val_dir=tmp_path, iters=1, batch=1, patch=12,
                          train_only=("nothing.*",), out_dir=tmp_path / "out2", progress=False))
