"""Differentiable SSIM (Wang et al. 2004) with the standard Gaussian window, for training.

`ssim` and its module form `SSIM` compare (B, C, H, W) images with an 11x11 Gaussian window (sigma 1.5), K1 0.01,
K2 0.03 and the data range of `SSIMConfig` (2.0 for [-1, 1] images). ``border="valid"`` (default) averages the map
where the window lies inside the image, as scikit-image does; ``border="same"`` zero-pads, as the public MGID code.
The border conventions and the public code's constants: docs/ALGORITHM.md, "Design notes".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from mgid.errors import InputError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 2.0  # images in [-1, 1]
#: How the SSIM map treats the image borders (`SSIMConfig.border`): "valid" positions only or zero-padded "same".
SSIMBorder = Literal["valid", "same"]
BORDERS = get_args(SSIMBorder)
REDUCTIONS = ("mean", "none")


@dataclass(frozen=True)
class SSIMConfig:
    """SSIM constants; the defaults are the standard ones for images in [-1, 1].

    ``border`` is one of `BORDERS`: ``"valid"`` (the map where the window lies inside the image) or ``"same"``
    (zero-padded, the full map).

    Raises:
        InputError: an unknown ``border``, an even or non-positive ``window_size``, or a non-positive
            ``data_range`` or ``sigma`` (a ``ValueError``).
    """

    data_range: float = DATA_RANGE
    window_size: int = SSIM_WINDOW
    sigma: float = SSIM_SIGMA
    k1: float = SSIM_K1
    k2: float = SSIM_K2
    border: SSIMBorder = "valid"

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.window_size % 2 == 0:
            raise InputError(f"window_size must be a positive odd int, got {self.window_size}")
        if self.border not in BORDERS:
            raise InputError(f"border must be one of {BORDERS}, got {self.border!r}")
        if self.data_range <= 0 or self.sigma <= 0:
            raise InputError(f"data_range and sigma must be positive, got {self.data_range}, {self.sigma}")


def gaussian_window(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """1-D Gaussian window summing to 1, centred on the middle tap.

    Args:
        size: taps.
        sigma: standard deviation in taps.
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        A (size,) tensor.
    """
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, window: torch.Tensor, padding: int) -> torch.Tensor:
    """Separable depthwise Gaussian filter of x (B, K, H, W)."""
    k = x.shape[1]
    size = window.numel()
    wx = window.view(1, 1, 1, size).expand(k, 1, 1, size)
    wy = window.view(1, 1, size, 1).expand(k, 1, size, 1)
    x = F.conv2d(x, wx, padding=(0, padding), groups=k)
    return F.conv2d(x, wy, padding=(padding, 0), groups=k)


def ssim(x: torch.Tensor, y: torch.Tensor, config: SSIMConfig = SSIMConfig(), reduction: str = "mean") -> torch.Tensor:
    """SSIM of two batches of images; differentiable in both.

    Half-precision inputs are computed in float32 (the variance is a difference of nearly equal moments).

    Args:
        x: (B, C, H, W) float.
        y: (B, C, H, W) float, the same shape.
        config: constants and borders (default: data range 2.0 for [-1, 1] images, valid borders).
        reduction: ``"mean"`` for the mean over batch, channels and positions, ``"none"`` for one value per image.

    Returns:
        A 0-dim tensor (``"mean"``) or a (B,) tensor (``"none"``).

    Raises:
        InputError: shapes differ or are not 4-D, an unknown ``reduction``, or images smaller than the window
            with ``border="valid"`` (a ``ValueError``).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise InputError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if reduction not in REDUCTIONS:
        raise InputError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    size = config.window_size
    if config.border == "valid" and min(x.shape[-2:]) < size:
        raise InputError(f"ssim with border='valid' needs H, W >= {size}, got {tuple(x.shape[-2:])}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x, y = x.float(), y.float()
    c = x.shape[1]
    window = gaussian_window(size, config.sigma, x.dtype, x.device)
    padding = size // 2 if config.border == "same" else 0
    # One grouped filter pass over the five moments' inputs.
    moments = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window, padding)
    mu_x, mu_y, xx, yy, xy = moments.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov_xy = xx - mu_xx, yy - mu_yy, xy - mu_xy  # population (biased) moments
    c1 = (config.k1 * config.data_range) ** 2
    c2 = (config.k2 * config.data_range) ** 2
    ssim_map = ((2 * mu_xy + c1) * (2 * cov_xy + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    per_image = ssim_map.flatten(1).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image


class SSIM(nn.Module):
    """Module form of `ssim`: ``SSIM()(x, y)`` -> 0-dim mean SSIM of (B, C, H, W) images.

    Args:
        config: constants and borders.
        reduction: ``"mean"`` or ``"none"``, as `ssim`.
    """

    def __init__(self, config: SSIMConfig = SSIMConfig(), reduction: str = "mean") -> None:
        super().__init__()
        self.config = config
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"{self.config}, reduction={self.reduction!r}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ssim(x, y, self.config, self.reduction)
