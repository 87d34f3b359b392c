"""The whitening op family of ``bench_ops.py``: feature covariance, the BSW mask's 1-D k-means
threshold alone, the BSW mask and the covariance + BSW loss (forward and forward+backward) at a
shape's (B, C, h, w), their checks and targets.

Peers: the same ops in ``use_reference()`` mode, a bare ``torch.bmm`` of the covariance's shape,
(B, C, HW) x (B, HW, C), and the GEMM floor of the whole pass (both frames' bmm, forward and
backward). The k-means threshold row times ``torch.ops.mgid.bsw_threshold`` on the n = B*C*C
variances against its reference (the full O(k G^2) dynamic programme in PyTorch); its target, on the
CPU with ``--threads 1``, is at most 2x the time of the two covariances it starts from (the
covariance row, twice); before the kernel ran each layer of the programme by divide and conquer it
took ~38 ms at the train shape on one thread of an AVX-512 Xeon, ~24x the two covariances. Run
through ``python -m benchmarks.bench_ops`` (``--threads 1`` for that target).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import mgid.ops as ops
from benchmarks.op_cases import Case, Shape, find_row, in_reference_mode, make_fwd, maxdiff
from mgid.ops import reference


def instance_normalized_features(shape: Shape, device: torch.device, dtype: torch.dtype,
                                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames' IN features (B, C, h, w) of one scene: a shared background plus different rain."""
    size = (shape.b, shape.c, shape.h, shape.w)
    background = torch.randn(size, generator=gen)
    f1 = F.instance_norm(background + 0.5 * torch.randn(size, generator=gen))
    f2 = F.instance_norm(background + 0.5 * torch.randn(size, generator=gen))
    return f1.to(device, dtype), f2.to(device, dtype)


def bsw_cases(shape: Shape, device: torch.device, dtype: torch.dtype, k: int, seed: int
              ) -> tuple[list[Case], dict[str, torch.Tensor]]:
    """Covariance, mask and covariance + BSW loss cases at one shape, and their inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    f1, f2 = instance_normalized_features(shape, device, dtype, gen)
    f1_leaf, f2_leaf = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    b, c, hw = shape.b, shape.c, shape.h * shape.w
    flat1 = f1.reshape(b, c, hw)
    flat1_t = flat1.transpose(1, 2)
    elt = f1.element_size()
    feat, cov = b * c * hw * elt, b * c * c * elt
    with torch.no_grad():
        cov1, cov2 = reference.feature_covariance(f1), reference.feature_covariance(f2)
        variances = reference.cross_frame_variance(cov1, cov2).to(torch.float64).reshape(-1)

    def threshold(values: torch.Tensor, k_: int) -> torch.Tensor:
        if ops.op_path(values.device) != "PyTorch reference":  # what the mask op would run
            return torch.ops.mgid.bsw_threshold(values, k_)
        return reference.kmeans1d_fast_threshold(values, k_)

    def bare_bmm() -> torch.Tensor:
        return torch.bmm(flat1, flat1_t)

    b1_leaf, b2_leaf = flat1.clone().requires_grad_(True), f2.reshape(b, c, hw).clone().requires_grad_(True)
    g_cov = torch.randn(b, c, c, generator=gen).to(device, dtype)

    def bmm_pair_fwd_bwd() -> None:
        b1_leaf.grad = None
        b2_leaf.grad = None
        s1 = torch.bmm(b1_leaf, b1_leaf.transpose(1, 2))
        s2 = torch.bmm(b2_leaf, b2_leaf.transpose(1, 2))
        torch.autograd.backward([s1, s2], [g_cov, g_cov])

    def loss_fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            f1_leaf.grad = None
            f2_leaf.grad = None
            fn(f1_leaf, f2_leaf, k).backward()
        return run

    no_compile = "not timed: the k-means mask has data-dependent control flow"
    na = {"compile": no_compile, "sdpa": "n/a", "loop": "n/a"}
    cases = [
        Case(shape.name, "covariance", "fwd", {
            "fused": make_fwd(ops.feature_covariance, f1),
            "reference": make_fwd(in_reference_mode(ops.feature_covariance), f1),
            **na, "bmm": bare_bmm, "bmm2_fb": "n/a",
        }, feat + cov, "read f (BC*HW), write Sigma (BCC)"),
        Case(shape.name, f"bsw_threshold k{k}", "fwd", {
            "fused": make_fwd(threshold, variances, k),
            "reference": make_fwd(reference.kmeans1d_fast_threshold, variances, k),
            **na, "bmm": "n/a", "bmm2_fb": "n/a",
        }, variances.numel() * variances.element_size(), "read the B*C*C variances (float64)"),
        Case(shape.name, f"bsw_mask k{k}", "fwd", {
            "fused": make_fwd(ops.bsw_mask, cov1, cov2, k),
            "reference": make_fwd(in_reference_mode(ops.bsw_mask), cov1, cov2, k),
            **na, "bmm": "n/a", "bmm2_fb": "n/a",
        }, 2 * cov + b * c * c, "read both Sigma, write the bool mask"),
        Case(shape.name, f"cov+BSW loss k{k}", "fwd", {
            "fused": make_fwd(ops.bsw_loss, f1, f2, k),
            "reference": make_fwd(in_reference_mode(ops.bsw_loss), f1, f2, k),
            **na, "bmm": bare_bmm, "bmm2_fb": "n/a",
        }, 2 * feat, "read both frames' features once (2 BC*HW)"),
        Case(shape.name, f"cov+BSW loss k{k}", "fwd+bwd", {
            "fused": loss_fwd_bwd(ops.bsw_loss),
            "reference": loss_fwd_bwd(in_reference_mode(ops.bsw_loss)),
            **na, "bmm": bare_bmm, "bmm2_fb": bmm_pair_fwd_bwd,
        }, 6 * feat, "fwd (2 BC*HW) + bwd: read both features, write both grads (4 BC*HW)"),
    ]
    return cases, {"f1": f1, "f2": f2, "cov1": cov1, "cov2": cov2}


def bsw_checks(shape: Shape, f1: torch.Tensor, f2: torch.Tensor, k: int) -> dict[str, Any]:
    """Fused against reference: BSW loss, covariance, and the number of mask elements that differ."""
    res: dict[str, Any] = {"shape": shape.name, "what": "bsw"}
    with torch.no_grad():
        try:
            with ops.use_reference():
                ref_loss = ops.bsw_loss(f1, f2, k)
                c1, c2 = ops.feature_covariance(f1), ops.feature_covariance(f2)
                ref_mask = ops.bsw_mask(c1, c2, k)
            fc1, fc2 = ops.feature_covariance(f1), ops.feature_covariance(f2)
            res["fused_vs_reference"] = {
                "loss": maxdiff(ops.bsw_loss(f1, f2, k), ref_loss),
                "loss_reference_value": float(ref_loss),
                "covariance": max(maxdiff(fc1, c1), maxdiff(fc2, c2)),
                # the same (reference) covariances in, the mask alone compared
                "mask_elements_differing_same_input": int((ops.bsw_mask(c1, c2, k) != ref_mask).sum()),
                # end to end: each path's own covariances (k-means boundaries are sensitive to rounding)
                "mask_elements_differing_end_to_end": int((ops.bsw_mask(fc1, fc2, k) != ref_mask).sum()),
                "mask_selected_reference": int(ref_mask.sum()),
            }
        except Exception as err:
            res["fused_vs_reference"] = f"error: {type(err).__name__}: {err}"
    return res


def bsw_targets(result: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """The docs/OPS.md target of the BSW loss (CUDA only): fused time / bare bmm time; and on the CPU
    with one thread, the k-means threshold's time / the two covariances' time (issue 17)."""
    if result["device"] == "cpu":
        return [threshold_target(result, k)]
    targets: list[dict[str, Any]] = []
    for pass_ in ("fwd+bwd", "fwd"):
        f = find_row(result, "train", f"cov+BSW loss k{k}", pass_, "fused")
        p = find_row(result, "train", f"cov+BSW loss k{k}", pass_, "bmm")
        measured = f["median_s"] / p["median_s"] if f and p else None
        targets.append({"target": f"cov+BSW loss {pass_} at train: fused time / bare bmm time",
                        "measured": measured, "unit": "x", "threshold": "<= 1.2x",
                        "met": None if measured is None else measured <= 1.2})
    return targets


def threshold_target(result: dict[str, Any], k: int) -> dict[str, Any]:
    """bsw_threshold at train / two covariances at train (fused medians), <= 2x with one torch thread;
    not evaluated (met None) with more threads."""
    t = find_row(result, "train", f"bsw_threshold k{k}", "fwd", "fused")
    c = find_row(result, "train", "covariance", "fwd", "fused")
    measured = t["median_s"] / (2 * c["median_s"]) if t and c else None
    threads = result.get("environment", {}).get("cpu", {}).get("torch_threads")
    met = None if measured is None or threads != 1 else measured <= 2.0
    return {"target": f"bsw_threshold k{k} at train: fused time / two covariances' fused time (--threads 1; "
                      f"ran with {threads})",
            "measured": measured, "unit": "x", "threshold": "<= 2x", "met": met}
