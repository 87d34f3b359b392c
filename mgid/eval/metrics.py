"""PSNR and SSIM in the convention de-raining papers report (so numbers compare with published ones).

`psnr`, `ssim` and `score` take two (H, W, 3) uint8 RGB images and score the Y channel of BT.601 YCbCr (MATLAB's
``rgb2ycbcr``, rounded), peak 255, no border crop, Gaussian SSIM 11x11 with sigma 1.5; ``channel="rgb"`` scores
RGB instead. `rgb_to_y` gives the Y plane. The exact scikit-image calls: docs/EVALUATE.md, "Design notes".
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mgid.errors import InputError

PEAK = 255.0
SSIM_SIGMA = 1.5
SSIM_MIN_SIDE = 11  # the Gaussian window (truncate 3.5 * sigma 1.5 -> 11 px) must fit
CHANNELS = ("y", "rgb")
Channel = Literal["y", "rgb"]


def _check(a: np.ndarray, b: np.ndarray) -> None:
    for name, img in (("a", a), ("b", b)):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise InputError(f"metrics expect HxWx3 uint8 RGB images, got {name}: {img.dtype} {img.shape} "
                             f"(convert network tensors with mgid.data.to_uint8)")
    if a.shape != b.shape:
        raise InputError(f"images differ in size: {a.shape} vs {b.shape}")


def rgb_to_y(rgb: np.ndarray, rounded: bool = True) -> np.ndarray:
    """Y of BT.601 YCbCr (16-235, MATLAB's ``rgb2ycbcr``).

    Args:
        rgb: (H, W, 3) uint8 RGB.
        rounded: round to integers, as MATLAB returns uint8 for uint8 input.

    Returns:
        Y, (H, W) float64.
    """
    y = rgb2ycbcr(rgb)[..., 0]
    return np.round(y) if rounded else y


def _planes(a: np.ndarray, b: np.ndarray, channel: str) -> tuple[np.ndarray, np.ndarray]:
    """The arrays scored: Y (HxW float64, rounded) or the RGB image as float64 (HxWx3)."""
    _check(a, b)
    if channel == "y":
        return rgb_to_y(a), rgb_to_y(b)
    if channel == "rgb":
        return a.astype(np.float64), b.astype(np.float64)
    raise InputError(f"channel must be one of {CHANNELS}, got {channel!r}")


def psnr(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> float:
    """PSNR in dB (peak 255) of two images.

    Args:
        a: (H, W, 3) uint8 RGB.
        b: (H, W, 3) uint8 RGB, the same size.
        channel: ``"y"`` (the Y channel, default) or ``"rgb"`` (the MSE over all three channels).

    Returns:
        The PSNR in dB; ``inf`` when the scored planes are identical.

    Raises:
        InputError: not uint8 (H, W, 3) images, sizes differ, or an unknown ``channel`` (a ``ValueError``).
    """
    pa, pb = _planes(a, b, channel)
    if np.array_equal(pa, pb):
        return math.inf  # skimage would divide by zero (and warn) to get the same answer
    return float(peak_signal_noise_ratio(pa, pb, data_range=PEAK))


def ssim(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> float:
    """SSIM of two images (Gaussian window 11x11, sigma 1.5, population statistics).

    Args:
        a: (H, W, 3) uint8 RGB, at least 11x11.
        b: (H, W, 3) uint8 RGB, the same size.
        channel: ``"y"`` (the Y channel, default) or ``"rgb"`` (the mean of the per-channel SSIMs).

    Returns:
        The SSIM; 1.0 when identical.

    Raises:
        InputError: not uint8 (H, W, 3) images, sizes differ, an unknown ``channel``, or smaller than 11x11
            (a ``ValueError``).
    """
    pa, pb = _planes(a, b, channel)
    if min(a.shape[:2]) < SSIM_MIN_SIDE:
        raise InputError(f"SSIM needs images of at least {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} pixels, got {a.shape[:2]}")
    return float(structural_similarity(pa, pb, gaussian_weights=True, sigma=SSIM_SIGMA, use_sample_covariance=False,
                                       data_range=PEAK, channel_axis=2 if pa.ndim == 3 else None))


def score(a: np.ndarray, b: np.ndarray, channel: Channel = "y") -> tuple[float, float]:
    """PSNR and SSIM of a prediction against a reference (see `psnr` and `ssim`).

    Args:
        a: the prediction, (H, W, 3) uint8 RGB.
        b: the reference, (H, W, 3) uint8 RGB, the same size.
        channel: ``"y"`` (default) or ``"rgb"``.

    Returns:
        ``(psnr, ssim)``.

    Raises:
        InputError: as `ssim` (a ``ValueError``).
    """
    return psnr(a, b, channel), ssim(a, b, channel)
