"""Public whitening ops: feature covariance, background-selective mask, BSW loss."""
from __future__ import annotations

import torch

from mgid.errors import InputError
from mgid.ops import reference
from mgid.ops._checks import check_covariances, check_feature_pair, check_features, check_k
from mgid.ops._dispatch import use_fused

BSW_METHODS = ("fast", "exact")


def feature_covariance(features: torch.Tensor) -> torch.Tensor:
    """Per-sample feature covariance ``f f^T / (HW - 1) + 1e-5 I``, f the features as (B, C, HW).

    Args:
        features: (B, C, H, W) floating, H*W >= 2.

    Returns:
        (B, C, C).

    Raises:
        TypeError: not a floating tensor.
        InputError: a bad shape or fewer than 2 pixels (a ``ValueError``).
        mgid.ops._dispatch.FusedOpsUnavailableError: ``MGID_OPS=fused`` without the compiled kernels.
    """
    check_features(features)
    if use_fused(features.device):
        return torch.ops.mgid.feature_covariance(features)
    return reference.feature_covariance(features)


def bsw_mask(cov1: torch.Tensor, cov2: torch.Tensor, k: int = 50, method: str = "fast") -> torch.Tensor:
    """Background-selective mask (B, C, C), bool, not differentiated.

    The element-wise variance of the two frames' covariances, (cov1 - cov2)^2 / 4, is clustered
    over all B*C*C elements by 1-D k-means; the lowest-variance cluster, restricted to the upper
    triangle with its diagonal, is selected. ``method="fast"`` (default; what the kernels run, on
    the device, no host sync): exact dynamic programming over a grid of 1024 candidate boundaries
    (so exact for up to 1024 values), then Lloyd iterations to settle the boundaries; see
    `mgid.ops.reference.kmeans1d_fast_threshold`. ``method="exact"``: the optimal
    clustering of the public code (``kmeans1d``, on the host: a CUDA input synchronises).

    Args:
        cov1: frame 1's covariances, (B, C, C).
        cov2: frame 2's covariances, (B, C, C).
        k: number of 1-D k-means clusters.
        method: ``"fast"`` or ``"exact"``.

    Returns:
        The mask, (B, C, C) bool.

    Raises:
        InputError: bad shapes, a ``k`` that is not a positive int, or an unknown ``method`` (a ``ValueError``).
        TypeError, mgid.ops._dispatch.FusedOpsUnavailableError: as `feature_covariance`.
    """
    check_covariances(cov1, cov2)
    k = check_k(k)
    if method not in BSW_METHODS:
        raise InputError(f"bsw_mask: method must be one of {BSW_METHODS}, got {method!r}")
    if method == "fast" and use_fused(cov1.device):
        return torch.ops.mgid.bsw_mask(cov1.detach(), cov2.detach(), k)
    return reference.bsw_mask(cov1, cov2, k, method)


def bsw_loss(features1: torch.Tensor, features2: torch.Tensor, k: int = 50, method: str = "fast") -> torch.Tensor:
    """Background selective whitening loss of two frames' features, each (B, C, H, W); 0-dim.

    sum over the mask of |cov1| + |cov2|, divided by B times the number of selected elements
    (0 if none), differentiable in both feature maps (the mask is not).

    Args:
        features1: frame 1's features, (B, C, H, W).
        features2: frame 2's features, the same shape.
        k: number of 1-D k-means clusters of the mask.
        method: ``"fast"`` or ``"exact"`` (see `bsw_mask`).

    Returns:
        The 0-dim loss.

    Raises:
        InputError, TypeError, mgid.ops._dispatch.FusedOpsUnavailableError: as `bsw_mask`.
    """
    check_feature_pair(features1, features2)
    check_features(features1)
    cov1 = feature_covariance(features1)
    cov2 = feature_covariance(features2)
    mask = bsw_mask(cov1, cov2, k, method)
    if use_fused(cov1.device):
        loss, _ = torch.ops.mgid.bsw_loss_masked(cov1, cov2, mask)
        return loss
    return reference.bsw_loss_masked(cov1, cov2, mask)
