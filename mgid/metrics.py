"""PSNR and SSIM in the convention de-raining papers report (so numbers compare with published ones).

Both images are HxWx3 uint8 RGB (already rounded). They are converted to the Y channel of YCbCr
(ITU-R BT.601, the 16-235 range of MATLAB's ``rgb2ycbcr``) with ``skimage.color.rgb2ycbcr``; Y is
rounded to integers as MATLAB returns uint8 for uint8 input. Then, with peak 255 and no border crop:

* PSNR: ``skimage.metrics.peak_signal_noise_ratio(data_range=255)``; identical images give ``inf``.
* SSIM: Wang et al. with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population
  statistics: ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``. Needs images of at least 11x11 pixels.
"""
from __future__ import annotations

import math

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PEAK = 255.0
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # the Gaussian window (truncate 3.5 * sigma 1.5 -> 11 px) must fit


def _check(a: np.ndarray, b: np.ndarray) -> None:
    for name, img in (("a", a), ("b", b)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"metrics expect HxWx3 uint8 RGB images, got {name}: {img.dtype} {img.shape} "
                             f"(convert network tensors with mgid.data.to_uint8)")
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")


def rgb_to_y(rgb: np.ndarray, rounded: bool = True) -> np.ndarray:
    """Y of BT.601 YCbCr (16-235) of an HxWx3 uint8 RGB image, HxW float64 (rounded like MATLAB's uint8)."""
    y = rgb2ycbcr(rgb)[..., 0]
    return np.round(y) if rounded else y


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel PSNR in dB of two HxWx3 uint8 RGB images (``inf`` when identical)."""
    _check(a, b)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    if np.array_equal(ya, yb):
        return math.inf  # skimage would divide by zero (and warn) to get the same answer
    return float(peak_signal_noise_ratio(ya, yb, data_range=PEAK))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Y-channel SSIM of two HxWx3 uint8 RGB images (1.0 when identical)."""
    _check(a, b)
    if min(a.shape[:2]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels, got {a.shape[:2]}")
    return float(structural_similarity(rgb_to_y(a), rgb_to_y(b), gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=PEAK))
