"""MATLAB-exact `imresize(I, scale, 'bicubic')`.

The benchmark's LR images were made with MATLAB, so generated LR must match them bit for bit. What MATLAB does
(toolbox/images/images/imresize.m + imresizemex), reproduced here:
  * cubic kernel with a = -0.5; when shrinking, antialiasing stretches it: h(x) = scale * cubic(scale * x),
    width 4 / scale;
  * output size ceil(in * scale); output pixel x (1-based) samples input position u = x/scale + 0.5*(1 - 1/scale),
    with P = ceil(width) + 2 taps starting at floor(u - width/2), weights normalised to sum 1, out-of-range
    indices mirrored symmetrically, and tap columns that are zero for every output pixel removed;
  * one 1-D pass per dimension, the most-shrunk dimension first (a stable sort of the scale factors, so rows
    go first when both factors are equal);
  * on uint8 input each pass returns uint8 (round half away from zero, saturate), so the second pass reads the
    rounded intermediate. Float input is resized without rounding.
Each pass accumulates in float64, tap by tap in MATLAB's order, so ties at .5 round the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KERNEL_WIDTH = 4.0  # support of the bicubic kernel, in input pixels at scale 1


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`)."""
    absx = np.abs(x)
    absx2 = absx ** 2
    absx3 = absx ** 3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


@dataclass(frozen=True)
class Contributions:
    """For each output pixel along one dimension: the input indices it reads (0-based) and their weights."""
    weights: np.ndarray  # (out_length, taps) float64
    indices: np.ndarray  # (out_length, taps) int64


def contributions(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> Contributions:
    """MATLAB's `contributions` for the bicubic kernel."""
    if scale < 1 and antialiasing:
        def kernel(x):
            return scale * cubic(scale * x)
        width = KERNEL_WIDTH / scale
    else:
        kernel = cubic
        width = KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)[:, None]
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    indices = left + np.arange(taps, dtype=np.float64)[None, :]  # 1-based, may fall outside [1, in_length]
    weights = kernel(u - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: index sequence 1..n, n..1, repeated.
    mirror = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, mirror.size)]
    keep = np.any(weights != 0, axis=0)
    return Contributions(weights[:, keep], indices[:, keep] - 1)


def _round_to_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's double -> uint8 cast: round half away from zero, saturate. Negative values saturate to 0
    either way, so floor(v + 0.5) is exact here. Works in place on `values`."""
    values += 0.5
    np.floor(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def resize_along_dim(img: np.ndarray, dim: int, contrib: Contributions, to_uint8: bool) -> np.ndarray:
    """One 1-D pass along axis `dim` (0 = rows/height, 1 = columns/width)."""
    # The resized axis goes first and contiguous, so that each tap gathers whole rows of memory.
    moved = np.ascontiguousarray(np.moveaxis(img, dim, 0), dtype=np.float64)
    out = np.zeros((contrib.weights.shape[0],) + moved.shape[1:], dtype=np.float64)
    extra = (slice(None),) + (None,) * (moved.ndim - 1)
    # Tap by tap, in MATLAB's summation order (a matrix product could reorder the sum and flip .5 ties).
    tap = np.empty_like(out)  # reused: fresh large arrays cost page faults on every tap
    for k in range(contrib.weights.shape[1]):
        np.take(moved, contrib.indices[:, k], axis=0, out=tap)
        tap *= contrib.weights[:, k][extra]
        out += tap
    if to_uint8:
        out = _round_to_uint8(out)
    return np.ascontiguousarray(np.moveaxis(out, 0, dim))


def output_size(shape: tuple[int, int], scale: tuple[float, float]) -> tuple[int, int]:
    return (int(math.ceil(shape[0] * scale[0])), int(math.ceil(shape[1] * scale[1])))


def dimension_order(scale: tuple[float, float]) -> list[int]:
    """MATLAB: `[~, order] = sort(scale)`; the stable sort keeps rows first for equal factors."""
    return sorted(range(2), key=lambda d: scale[d])


def imresize(img: np.ndarray, scale: float | tuple[float, float] | None = None,
             output_shape: tuple[int, int] | None = None, antialiasing: bool = True) -> np.ndarray:
    """Resize an HxW or HxWxC image like MATLAB's `imresize(img, scale, 'bicubic')`.

    uint8 in -> uint8 out (each pass rounded, as MATLAB); float in -> float64 out (no rounding).
    Give `scale` (a factor, or one per dimension) or `output_shape` (rows, cols); with only `output_shape`
    the factors are out/in per dimension, as MATLAB does.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC image, got shape {img.shape}")
    is_uint8 = img.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"imresize supports uint8 or float images, got {img.dtype}")
    in_shape = img.shape[:2]
    if scale is not None:
        factors = (float(scale), float(scale)) if np.isscalar(scale) else tuple(float(s) for s in scale)
        out_shape = tuple(output_shape) if output_shape is not None else output_size(in_shape, factors)
    elif output_shape is not None:
        out_shape = tuple(int(v) for v in output_shape)
        factors = (out_shape[0] / in_shape[0], out_shape[1] / in_shape[1])
    else:
        raise ValueError("imresize needs a scale or an output_shape")
    result = img if is_uint8 else img.astype(np.float64)
    for dim in dimension_order(factors):
        contrib = contributions(in_shape[dim], out_shape[dim], factors[dim], antialiasing)
        result = resize_along_dim(result, dim, contrib, to_uint8=is_uint8)
    return result
