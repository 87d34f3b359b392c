"""Differentiable SSIM (Wang et al. 2004) with the standard Gaussian window, for training.

Window: 11x11 Gaussian, sigma 1.5 (separable), K1 = 0.01, K2 = 0.03, C1 = (K1 L)^2, C2 = (K2 L)^2
with L the data range. Images in this package are in [-1, 1], so L = 2.0 by default.

Borders: with ``border="valid"`` (default) the SSIM map is computed only where the window lies
inside the image ((H-10) x (W-10) positions) and averaged there. That is exactly what
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` averages (it filters with padding, then crops 5 pixels per side
before the mean). ``border="same"`` zero-pads by 5 and averages the full H x W map, as the common
``pytorch_ssim`` package does. Channels are filtered separately and their maps averaged.

The public MGID training code uses the zero-padded form with C1 = 0.01^2 and C2 = 0.03^2 on its
[-1, 1] images, i.e. ``SSIMConfig(data_range=1.0, border="same")`` here (the ``paper`` recipe's); the defaults
(data range 2, valid borders) are scikit-image's reading of the same images, with constants 4x larger.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

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

    ``border`` is one of `BORDERS` (see the module docstring); a bad value, an even or non-positive
    ``window_size`` or a non-positive ``data_range`` or ``sigma`` raises ValueError.
    """

    data_range: float = DATA_RANGE
    window_size: int = SSIM_WINDOW
    sigma: float = SSIM_SIGMA
    k1: float = SSIM_K1
    k2: float = SSIM_K2
    border: SSIMBorder = "valid"

    def __post_init__(self) -> None:
        if self.window_size < 1 or self.window_size % 2 == 0:
            raise ValueError(f"window_size must be a positive odd int, got {self.window_size}")
        if self.border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {self.border!r}")
        if self.data_range <= 0 or self.sigma <= 0:
            raise ValueError(f"data_range and sigma must be positive, got {self.data_range}, {self.sigma}")


def gaussian_window(size: int, sigma: float, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """1-D Gaussian (size,) summing to 1, centred on the middle tap."""
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
    """SSIM of x and y, each (B, C, H, W); differentiable in both.

    Returns a 0-dim mean over batch, channels and positions (``reduction="mean"``) or one value per
    image (B,) (``"none"``). Half-precision inputs are computed in float32 (the variance is a
    difference of nearly equal moments).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    size = config.window_size
    if config.border == "valid" and min(x.shape[-2:]) < size:
        raise ValueError(f"ssim with border='valid' needs H, W >= {size}, got {tuple(x.shape[-2:])}")
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
    """Module form of :func:`ssim`: ``SSIM()(x, y)`` -> 0-dim mean SSIM of (B, C, H, W) images."""

    def __init__(self, config: SSIMConfig = SSIMConfig(), reduction: str = "mean") -> None:
        super().__init__()
        self.config = config
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"{self.config}, reduction={self.reduction!r}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ssim(x, y, self.config, self.reduction)
