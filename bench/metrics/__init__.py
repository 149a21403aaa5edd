"""Image-quality metrics: PSNR/SSIM on Y (`psnr_ssim`), LPIPS through pyiqa (`lpips`, imported on demand)."""
from bench.metrics.psnr_ssim import psnr_y, rgb_to_y, ssim_y

__all__ = ["psnr_y", "rgb_to_y", "ssim_y"]
