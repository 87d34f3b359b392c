"""Input validation shared by every public op, on both paths, so errors read the same everywhere.

Checks look only at metadata (shape, dtype, device), never at values: a value check would force
a host synchronisation on CUDA. NaN policy: values are not inspected; a NaN or Inf in an input
propagates to the outputs it touches (the training loop checks its loss for finiteness).
"""
from __future__ import annotations

import torch

from mgid.errors import InputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def check_tensor(name: str, t: object, ndim: int, layout: str) -> torch.Tensor:
    """``t`` is a non-empty floating tensor of rank ``ndim``; ``layout`` names the expected shape."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise InputError(f"{name} must have shape {layout} ({ndim} dims), got {_describe(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), got "
                        f"{_describe(t)}; convert it with .float()")
    if t.numel() == 0:
        raise InputError(f"{name} must not be empty, got {_describe(t)}")
    return t


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise InputError(f"all inputs must be on one device, got {listing}; move them with .to(device)")


def check_query_items(query: torch.Tensor, items: torch.Tensor) -> None:
    """query (B, C, H, W) and items (M, C) with matching C on one device."""
    check_tensor("query", query, 4, "(B, C, H, W)")
    check_tensor("items", items, 2, "(M, C)")
    check_same_device(query=query, items=items)
    if items.shape[1] != query.shape[1]:
        raise InputError(f"items must have shape (M, C) with C = query.shape[1] = {query.shape[1]}, got "
                         f"items {_describe(items)}")


def check_covariances(cov1: torch.Tensor, cov2: torch.Tensor) -> None:
    check_tensor("cov1", cov1, 3, "(B, C, C)")
    check_tensor("cov2", cov2, 3, "(B, C, C)")
    check_same_device(cov1=cov1, cov2=cov2)
    if cov1.shape[1] != cov1.shape[2]:
        raise InputError(f"cov1 must be square per sample, (B, C, C), got {_describe(cov1)}")
    if cov1.shape != cov2.shape:
        raise InputError(f"cov1 and cov2 must have the same shape (B, C, C), got {tuple(cov1.shape)} and "
                         f"{tuple(cov2.shape)}")


def check_feature_pair(features1: torch.Tensor, features2: torch.Tensor) -> None:
    check_tensor("features1", features1, 4, "(B, C, H, W)")
    check_tensor("features2", features2, 4, "(B, C, H, W)")
    check_same_device(features1=features1, features2=features2)
    if features1.shape != features2.shape:
        raise InputError(f"features1 and features2 must have the same shape (B, C, H, W), got "
                         f"{tuple(features1.shape)} and {tuple(features2.shape)}")


def check_features(features: torch.Tensor) -> None:
    check_tensor("features", features, 4, "(B, C, H, W)")
    if features.shape[2] * features.shape[3] < 2:
        raise InputError(f"features need H*W >= 2 pixels for a covariance (divides by HW - 1), got "
                         f"{_describe(features)}")


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k (the number of 1-D k-means clusters) must be a positive int, got {k!r}")
    return k
