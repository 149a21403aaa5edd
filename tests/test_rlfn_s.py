"""rlfn-s, the demo's project-trained x2 network: its topology and the shipped weights on Set5."""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn as nn

from bench.cli import main
from bench.quant.scopes import resolve_scope
from models import create_model
from models.fetch import shipped_weights_path

# Measured with `bench eval --model rlfn-s --scale 2 --dataset Set5 --data-root ../shared/data/benchmark --no-lpips`
# (official MATLAB-bicubic LR, Y channel, border = 2); see models/weights/MODEL_CARD.md.
SHIPPED_SET5_X2 = 37.02
PARAMS = 152_748


def test_topology_is_rlfn_with_four_32_channel_blocks():
    model = create_model("rlfn-s", 2, weights="random")
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    assert [type(m).__name__ for m in model.feature_modules()] == ["RLFB"] * 4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert tuple(convs[0].weight.shape) == (32, 3, 3, 3) and tuple(convs[-1].weight.shape) == (12, 32, 3, 3)
    # The default scope quantizes every conv (first and last at 8 bits); the ESA's sigmoid gate stays FP.
    assert resolve_scope(model).name == "ptq4sr"


def test_output_is_the_upsampler_of_body_plus_head_features(one_thread):
    """RLFN's global skip is in feature space: no image-level (bicubic) skip, so quantization error of the body
    reaches the image through the upsampler, as in IMDN, RFDN and RLFN."""
    torch.manual_seed(0)
    model = create_model("rlfn-s", 2, weights="random")
    x = torch.rand(1, 3, 24, 20)  # the ESA max-pools 7x7 after a stride-2 conv: >= 16 pixels a side
    with torch.no_grad():
        fea = model.head(x)
        expected = model.upsampler(model.body_conv(model.blocks(fea)) + fea)
        assert torch.equal(model(x), expected)
    assert expected.shape == (1, 3, 48, 40)


def test_shipped_weights_on_set5(benchmark_root, capsys):
    path = shipped_weights_path("rlfn-s", 2)
    assert path.is_file() and path.stat().st_size < 1_000_000
    args = ["eval", "--model", "rlfn-s", "--scale", "2", "--dataset", "Set5", "--data-root",
            str(benchmark_root), "--device", "cpu", "--no-lpips", "--json", "--threads", "1"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["weights"] == str(path)
    assert f"{record['psnr']:.2f}" == f"{SHIPPED_SET5_X2:.2f}"
    assert np.isfinite(record["ssim"]) and record["ssim"] > 0.95


def test_shipped_weights_load_without_the_shared_folder(one_thread):
    """The demo's model must work offline on a fresh clone: the default weights are the committed file."""
    model = create_model("rlfn-s", 2)
    assert model.weights_source == str(shipped_weights_path("rlfn-s", 2))
    torch.manual_seed(0)
    random_init = create_model("rlfn-s", 2, weights="random")
    with torch.no_grad():
        for value in (0.2, 0.5, 0.8):
            flat = torch.full((1, 3, 24, 24), value)
            # A flat image stays flat away from the zero-padded border (measured: within 0.0022) with the trained
            # weights; a random init is off by more than 0.1 (measured 0.54 at 0.5).
            assert float((model(flat)[..., 8:-8, 8:-8] - value).abs().max()) < 0.01
            assert float((random_init(flat)[..., 8:-8, 8:-8] - value).abs().max()) > 0.1
