"""MGID training objective and the differentiable SSIM it uses."""
from mgid.losses.mgid_loss import LossWeights, MGIDLoss
from mgid.losses.ssim import SSIM, SSIMConfig, gaussian_window, ssim

__all__ = ["LossWeights", "MGIDLoss", "SSIM", "SSIMConfig", "gaussian_window", "ssim"]
