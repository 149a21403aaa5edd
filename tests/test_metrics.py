"""PSNR/SSIM on Y (exact values, an independent SSIM), LPIPS with stand-in weights and without weights."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from bench.metrics import lpips as lpips_module
from bench.metrics.psnr_ssim import crop_border, psnr_y, rgb_to_y, ssim, ssim_y


def _random_pair(shape=(96, 80, 3), noise=12, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape).astype(np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return sr, hr


def test_y_channel_uses_matlab_bt601_coefficients():
    assert rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0, abs=1e-12)
    assert rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == 16.0
    pixel = np.array([[[10, 200, 30]]], np.uint8)
    assert rgb_to_y(pixel)[0, 0] == pytest.approx(16 + (65.481 * 10 + 128.553 * 200 + 24.966 * 30) / 255, abs=1e-12)


def test_psnr_of_a_constant_offset_is_known_exactly():
    hr = np.random.default_rng(1).integers(20, 200, (40, 50, 3)).astype(np.uint8)
    sr = hr + np.uint8(3)
    # +3 on R, G and B moves Y by 3 * 219/255, everywhere.
    expected = 20 * math.log10(255 / (3 * 219 / 255))
    assert psnr_y(sr, hr, border=2) == pytest.approx(expected, abs=1e-9)
    assert round(expected, 2) == 39.91


def test_border_is_cropped_before_measuring():
    hr = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    sr = hr.copy()
    sr[:3] = 0          # damage only the first three rows
    assert psnr_y(sr, hr, border=3) == math.inf
    assert psnr_y(sr, hr, border=2) < 30
    assert ssim_y(sr, hr, border=3) == pytest.approx(1.0, abs=1e-12)


def test_ssim_agrees_with_scikit_image():
    from skimage.metrics import structural_similarity
    for seed, noise in [(0, 12), (1, 40), (2, 3)]:
        sr, hr = _random_pair(noise=noise, seed=seed)
        ours = ssim_y(sr, hr, border=4)
        a, b = crop_border(rgb_to_y(sr), 4), crop_border(rgb_to_y(hr), 4)
        theirs = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255)
        # Measured: equal to ~1e-15 (the same 11x11 window and 'valid' region).
        assert ours == pytest.approx(theirs, abs=1e-9)


def test_ssim_of_a_constant_offset_by_hand():
    # For b = a + c: sigma terms equal, so SSIM = mean((2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)); with a flat
    # image that is exact.
    a = np.full((20, 20), 100.0)
    b = a + 10
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1), abs=1e-12)


# ------------------------------------------------------------------------------------------------ LPIPS

@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lpips_module.reset_warning()
    yield tmp_path / "torch"
    lpips_module.reset_warning()


def _small_random(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    # A Toeplitz-like view (strides of 1) of a short random vector: random-looking weights of the right shape
    # whose saved file holds only the short vector (AlexNet's real state dict is 233 MB).
    storage = torch.randn(sum(shape) + 1, generator=generator) * 0.05
    return storage.as_strided(tuple(shape), (1,) * len(shape))


def _write_stand_in_weights() -> None:
    """Random weights with the real keys and shapes, at the file names pyiqa/torchvision look for."""
    import torchvision
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.alexnet().state_dict().items()}
    backbone = lpips_module.backbone_path("alex")
    backbone.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: _small_random(shape, generator) for k, shape in shapes.items()}, backbone)
    linear = lpips_module.linear_path("alex")
    linear.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator)
                for i, c in enumerate([64, 192, 384, 256, 256])}, linear)


def test_lpips_without_weights_is_none_with_one_warning(torch_home):
    sr, hr = _random_pair()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = lpips_module.LPIPSMetric()(sr, hr, 4)
        second = lpips_module.LPIPSMetric()(sr, hr, 4)
    assert first is None and second is None
    lpips_warnings = [w for w in caught if "LPIPS" in str(w.message)]
    assert len(lpips_warnings) == 1
    message = str(lpips_warnings[0].message)
    assert "alexnet-owt-7be5be79.pth" in message and "LPIPS_v0.1_alex-df73285e.pth" in message
    assert str(torch_home) in message


def test_lpips_with_stand_in_weights(torch_home):
    _write_stand_in_weights()
    metric = lpips_module.LPIPSMetric()
    assert metric.available
    sr, hr = _random_pair(shape=(64, 64, 3), noise=30)
    assert metric(hr, hr, 0) == pytest.approx(0.0, abs=1e-6)
    value = metric(sr, hr, 2)
    assert value is not None and math.isfinite(value) and value > 0
