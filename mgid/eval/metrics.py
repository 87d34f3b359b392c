"""PSNR and SSIM in the convention de-raining papers report (so numbers compare with published ones).

Both images are HxWx3 uint8 RGB (already rounded). They are converted to the Y channel of YCbCr
(ITU-R BT.601, the 16-235 range of MATLAB's ``rgb2ycbcr``) with ``skimage.color.rgb2ycbcr``; Y is
rounded to integers as MATLAB returns uint8 for uint8 input. Then, with peak 255 and no border crop:

* PSNR: ``skimage.metrics.peak_signal_noise_ratio(data_range=255)``; identical images give ``inf``.
* SSIM: Wang et al. with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population
  statistics: ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``. Needs images of at least 11x11 pixels.

``channel="rgb"`` scores the three RGB channels instead: PSNR from the MSE over all of them, SSIM
the mean of the per-channel SSIMs (same window and constants), as ``channel_axis=2`` computes.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

PEAK = 255.0
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # the Gaussian window (truncate 3.5 * sigma 1.5 -> 11 px) must fit
CHANNELS = ("y", "rgb")
Channel = Literal["y", "rgb"]


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


def _planes(a: np.ndarray, b: np.ndarray, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays scored: Y (HxW float64, rounded) or the RGB image as float64 (HxWx3)."""
    _check(a, b)
    if channel == "y":
        return rgb_to_y(a), rgb_to_y(b)
    if channel == "rgb":
        return a.astype(np.float64), b.astype(np.float64)
    raise ValueError(f"channel must be one of {CHANNELS}, got {channel!r}")


def psnr(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> float:
    """PSNR in dB (peak 255) of two HxWx3 uint8 RGB images on Y (default) or RGB; ``inf`` when identical."""
    pa, pb = _planes(a, b, channel)
    if np.array_equal(pa, pb):
        return math.inf  # skimage would divide by zero (and warn) to get the same answer
    return float(peak_signal_noise_ratio(pa, pb, data_range=PEAK))


def ssim(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> float:
    """SSIM of two HxWx3 uint8 RGB images on Y (default) or RGB (mean over channels); 1.0 when identical."""
    pa, pb = _planes(a, b, channel)
    if min(a.shape[:2]) < SSIM_MIN_SIDE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels, got {a.shape[:2]}")
    return float(structural_similarity(pa, pb, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                                       data_range=PEAK, channel_axis=2 if pa.ndim == 3 else None))


def score(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> tuple[float, float]:
    """(PSNR, SSIM) of prediction ``a`` against reference ``b`` (both HxWx3 uint8 RGB)."""
    return psnr(a, b, channel), ssim(a, b, channel)
