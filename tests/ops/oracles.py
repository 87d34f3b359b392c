"""Test oracles of the ops that the shipped reference no longer computes the slow way.

``full_scan_kmeans1d`` is the BSW mask's 1-D k-means as the reference ran it before it took the
kernels' divide and conquer: every layer of the grid dynamic programme by a full O(G^2) scan (one
dense (G+1, G+1) table of run SSEs, ``torch.min`` / ``torch.argmin`` down each column). It is the
definition the divide and conquer must equal bit for bit (csrc/whitening_math.h: "a certified cell
and a fully scanned one have the value and minimiser of the full scan").
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from mgid.ops import reference as ref


class FullScan(NamedTuple):
    """What the full-scan programme found.

    threshold: 0-dim float64, as `mgid.ops.reference.kmeans1d_fast_threshold`.
    d: (k, G + 1) float64, D[l][g]; meaningful for g >= l + 1 (and every g >= 1 in layer 0).
    arg: (k, G + 1) int64, the leftmost minimiser of D[l][g]; meaningful for l >= 1, g >= l + 1.
    k: the number of clusters after clamping to [1, G].
    """

    threshold: torch.Tensor
    d: torch.Tensor
    arg: torch.Tensor
    k: int


def full_scan_kmeans1d(values: torch.Tensor, k: int) -> FullScan:
    """The O(k G^2) grid programme + Lloyd of the BSW threshold, with its tables (see `FullScan`).

    values: any shape, at least one element, any floating dtype (clustered in float64); k: clusters
    (clamped to [1, G]). The same inputs (`_kmeans_inputs`), grid and Lloyd stage (`lloyd_threshold`) as the
    reference: only the programme differs.
    """
    x, y, p1, p2 = ref._kmeans_inputs(values)
    n = x.numel()
    pos = ref.kmeans_grid_positions(n, x.device)
    grid = pos.numel() - 1
    k = max(1, min(int(k), grid))

    # SSE of the run [p_h, p_g) for every pair h < g: (G+1, G+1).
    s = p1[pos][None, :] - p1[pos][:, None]
    length = (pos[None, :] - pos[:, None]).to(x.dtype)
    sse = ((p2[pos][None, :] - p2[pos][:, None]) - s * s / length).clamp_min(0)
    h_idx = torch.arange(grid + 1, device=x.device)
    before = h_idx[:, None] < h_idx[None, :]
    d = sse[0].clone()  # layer 0: one cluster over [0, p_g)
    d_rows = [d]
    argmins = [torch.zeros(grid + 1, dtype=torch.int64, device=x.device)]
    for layer in range(1, k):
        valid = before & (h_idx[:, None] >= layer)
        total = torch.where(valid, d[:, None] + sse, torch.full_like(sse, float("inf")))
        d = total.min(dim=0).values
        argmins.append(torch.argmin(total, dim=0))  # the first minimiser, as the kernels
        d_rows.append(d)
    arg = torch.stack(argmins)
    thr = ref.lloyd_threshold(x, y, p1, pos, arg)  # the Lloyd stage is shared: this oracle checks the programme
    return FullScan(thr, torch.stack(d_rows), arg, k)


def full_scan_threshold(values: torch.Tensor, k: int) -> torch.Tensor:
    """The threshold of `full_scan_kmeans1d`: 0-dim float64."""
    return full_scan_kmeans1d(values, k).threshold
