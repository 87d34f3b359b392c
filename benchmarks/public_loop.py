"""Per-item-loop transcription of the public MNAD/MGID memory code: the slow baseline.

This module mirrors, step by step, what the public MNAD memory module (which MGID reuses) does in
training, so the benchmarks can time it against :mod:`mgid.ops`. It is written from the
description in ``docs/ALGORITHM.md`` (sections "Memory read", "Memory update",
"Memory losses"); it is deliberately *not* optimised:

* every sub-step recomputes its own score matrix, with both softmaxes, as the public code does;
* the update loops over the M items in Python and finds each item's queries with ``nonzero``
  (a host sync per item on CUDA), weighting them by ``score[idx, i] / max(score[:, i])`` where
  ``score`` is the softmax over *queries* (column-wise);
* the losses take the nearest items with ``topk`` (top-1 for compactness, top-2 for the triplet).

Semantics match :mod:`mgid.ops.reference` with its defaults (``grad_through_weights=False``,
max over all queries), so the benchmark can check both agree before timing them.

Shapes: query ``q`` (B, C, H, W) (not yet normalised), memory items ``keys`` (M, C), unit rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalize_query(query: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> unit-norm queries in channels-last layout (B, H, W, C), as the public forward does."""
    return F.normalize(query, dim=1).permute(0, 2, 3, 1)


def get_score(keys: torch.Tensor, query_bhwc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every query against every item, softmaxed both ways.

    Returns ``(softmax over queries (dim 0), softmax over items (dim 1))``, each (N, M).
    """
    b, h, w, _ = query_bhwc.shape
    m = keys.shape[0]
    score = torch.matmul(query_bhwc, keys.t()).view(b * h * w, m)
    return F.softmax(score, dim=0), F.softmax(score, dim=1)


def read_normalized(query_bhwc: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Memory read of already-normalised queries (B, H, W, C) -> (B, 2C, H, W) = concat[q_hat, W P].

    W (softmax over items) is detached before forming W P, so that half carries no gradient.
    """
    b, h, w, c = query_bhwc.shape
    _, score_memory = get_score(keys, query_bhwc)
    flat = query_bhwc.contiguous().view(b * h * w, c)
    read = torch.matmul(score_memory.detach(), keys)
    out = torch.cat((flat, read), dim=1).view(b, h, w, 2 * c)
    return out.permute(0, 3, 1, 2)


def update_query_loop(keys: torch.Tensor, top1: torch.Tensor, score_query: torch.Tensor,
                      flat_query: torch.Tensor) -> torch.Tensor:
    """The per-item Python loop of the public update: the (M, C) increments of the items.

    ``top1`` (N, 1): each query's nearest item; ``score_query`` (N, M): softmax over queries;
    ``flat_query`` (N, C): unit-norm queries. Item i gets the sum, over the queries assigned to
    it, of ``score_query[k, i] / max(score_query[:, i]) * q_k``; items without queries get 0.
    """
    m, c = keys.shape
    increments = torch.zeros((m, c), dtype=flat_query.dtype, device=flat_query.device)
    for i in range(m):
        idx = torch.nonzero(top1.squeeze(1) == i)  # (a, 1), a host sync per item on CUDA
        if idx.shape[0] != 0:
            weight = score_query[idx, i] / torch.max(score_query[:, i])  # (a, 1)
            increments[i] = torch.sum(weight * flat_query[idx].squeeze(1), dim=0)
        else:
            increments[i] = 0
    return increments


def update_normalized(query_bhwc: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Training-time memory update of normalised queries (B, H, W, C) -> new items (M, C), no gradient."""
    b, h, w, c = query_bhwc.shape
    score_query, score_memory = get_score(keys, query_bhwc)
    flat = query_bhwc.contiguous().view(b * h * w, c)
    _, top1 = torch.topk(score_memory, 1, dim=1)
    increments = update_query_loop(keys, top1, score_query, flat)
    return F.normalize(increments + keys, dim=1).detach()


def compactness_normalized(query_bhwc: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Compactness (gathering) loss: MSE between each query and its nearest item (detached)."""
    b, h, w, c = query_bhwc.shape
    _, score_memory = get_score(keys, query_bhwc)
    flat = query_bhwc.contiguous().view(b * h * w, c)
    _, top1 = torch.topk(score_memory, 1, dim=1)
    return F.mse_loss(flat, keys[top1].squeeze(1).detach())


def separateness_normalized(query_bhwc: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Separateness (spreading) loss: triplet margin 1 between each query, its nearest and second nearest item."""
    b, h, w, c = query_bhwc.shape
    _, score_memory = get_score(keys, query_bhwc)
    flat = query_bhwc.contiguous().view(b * h * w, c)
    _, top2 = torch.topk(score_memory, 2, dim=1)
    positive, negative = keys[top2[:, 0]], keys[top2[:, 1]]
    return torch.nn.TripletMarginLoss(margin=1.0)(flat, positive.detach(), negative.detach())


# --- Entry points with the mgid.ops signatures (they normalise the raw query first) -------------

def memory_read(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (M, C) -> (B, 2C, H, W); like ``mgid.ops.memory_read`` with its defaults."""
    return read_normalized(_normalize_query(query), keys)


def memory_update(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), (M, C) -> new items (M, C); like ``mgid.ops.memory_update`` with its defaults.

    Like the public code it does not switch autograd off (the result is detached at the end).
    """
    return update_normalized(_normalize_query(query), keys)


def memory_losses(query: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W), (M, C) -> (compactness, separateness); like ``mgid.ops.memory_losses``."""
    q = _normalize_query(query)
    return compactness_normalized(q, keys), separateness_normalized(q, keys)


def memory_step(query: torch.Tensor, keys: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training-time pass of the public memory module.

    Normalises once, then (in the public order) compactness loss, separateness loss, read and
    update, each recomputing its scores. Returns ``(read_out, new_items, compactness, separateness)``.
    """
    q = _normalize_query(query)
    compactness = compactness_normalized(q, keys)
    separateness = separateness_normalized(q, keys)
    out = read_normalized(q, keys)
    new_items = update_normalized(q, keys)  # built under autograd, detached at the end, as in the public code
    return out, new_items, compactness, separateness
