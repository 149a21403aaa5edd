"""PSNR and SSIM on the Y channel, the BasicSR/SwinIR protocol (spec §5).

  * Y of BT.601 YCbCr with MATLAB's coefficients on a 0-255 scale, not rounded:
    Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255;
  * `border` pixels (= the scale) cropped from every side;
  * PSNR = 20 log10(255 / sqrt(MSE)) in float64;
  * SSIM = BasicSR `_ssim`: 11x11 Gaussian window, sigma 1.5, 'valid' region, C1 = (0.01*255)^2,
    C2 = (0.03*255)^2, mean of the SSIM map.
"""
from __future__ import annotations

import math

import numpy as np

Y_WEIGHTS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
Y_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """uint8 (or 0-255 float) HxWx3 RGB -> float64 HxW luma in [16, 235]. A single channel is returned as is."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 1:
        return img[..., 0]
    return img @ Y_WEIGHTS + Y_OFFSET


def crop_border(img: np.ndarray, border: int) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def _prepare(sr: np.ndarray, hr: np.ndarray, border: int) -> tuple[np.ndarray, np.ndarray]:
    if sr.shape != hr.shape:
        raise ValueError(f"SR {sr.shape} and HR {hr.shape} differ in shape")
    return crop_border(rgb_to_y(sr), border), crop_border(rgb_to_y(hr), border)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR of two arrays on a 0-`data_range` scale (inf when identical)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return math.inf if mse == 0 else float(20.0 * math.log10(data_range / math.sqrt(mse)))


def gaussian_kernel_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """OpenCV's getGaussianKernel(size, sigma): the window BasicSR builds its 2-D kernel from (outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering with a symmetric 1-D kernel along both axes (= filter2D + [5:-5, 5:-5])."""
    n = kernel.size
    rows = sum(kernel[k] * img[k:img.shape[0] - n + 1 + k] for k in range(n))
    return sum(kernel[k] * rows[:, k:rows.shape[1] - n + 1 + k] for k in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two single-channel 0-255 images (BasicSR `_ssim`)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
    g = gaussian_kernel_1d()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    mu_a2, mu_b2, mu_ab = mu_a ** 2, mu_b ** 2, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_a2
    var_b = _filter_valid(b * b, g) - mu_b2
    cov = _filter_valid(a * b, g) - mu_ab
    ssim_map = ((2 * mu_ab + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a2 + mu_b2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(ssim_map.mean())


def psnr_y(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """PSNR on Y with `border` pixels cropped from each side (border = scale in the protocol)."""
    sr_y, hr_y = _prepare(sr_u8, hr_u8, border)
    return psnr(sr_y, hr_y)


def ssim_y(sr_u8: np.ndarray, hr_u8: np.ndarray, border: int) -> float:
    """SSIM on Y with `border` pixels cropped from each side."""
    sr_y, hr_y = _prepare(sr_u8, hr_u8, border)
    return ssim(sr_y, hr_y)
