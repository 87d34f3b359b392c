"""Public memory ops: MNAD read, top-1 update, the compactness/separateness losses, and all three in one step.

Each validates its inputs, then runs the compiled kernel of the tensor's device (see
`mgid.ops._dispatch`) or the PyTorch reference.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from mgid.errors import InputError
from mgid.ops import reference
from mgid.ops._checks import check_query_items
from mgid.ops._dispatch import use_fused


def memory_read(query: torch.Tensor, items: torch.Tensor, grad_through_weights: bool = False) -> torch.Tensor:
    """Read the memory: query (B, C, H, W), items (M, C) -> (B, 2C, H, W) = concat[q_hat, W P].

    q_hat is the query scaled to unit norm per pixel, W = softmax over items of q_hat P^T. Items
    get no gradient; the read half carries none either unless ``grad_through_weights`` (the
    public code detaches W). fp16/bf16 queries accumulate in fp32 and items may stay fp32.

    Args:
        query: (B, C, H, W) floating, the encoder's query.
        items: (M, C) floating, the memory items, on the query's device.
        grad_through_weights: let the gradient flow through the softmax weights W.

    Returns:
        (B, 2C, H, W): ``concat[q_hat, W P]``.

    Raises:
        TypeError: an input is not a floating tensor.
        InputError: bad shapes, empty inputs or different devices (a ``ValueError``).
        mgid.ops._dispatch.FusedOpsUnavailableError: ``MGID_OPS=fused`` without the compiled kernels.
    """
    check_query_items(query, items)
    if use_fused(query.device):
        return torch.ops.mgid.memory_read(query, items.detach(), grad_through_weights)
    return reference.memory_read(query, items, grad_through_weights)


def memory_update_stats(
    query: torch.Tensor, items: torch.Tensor, max_over_assigned: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item (col_max (M,), weighted_sum (M, C)) of the update, in fp32 (fp64 for fp64 input).

    What a multi-process update reduces: with G = all-reduce-max(col_max), the global sum is the
    all-reduce-sum of weighted_sum * exp(col_max - G) (0 where col_max is -inf), and the new items
    are normalize(P + sum). See `mgid.ops.reference.memory_update_stats`.

    Args:
        query: (B, C, H, W) floating.
        items: (M, C) floating, on the query's device.
        max_over_assigned: the max over each item's assigned queries (the paper) rather than over all.

    Returns:
        ``(col_max, weighted_sum)``: (M,) and (M, C), no gradient.

    Raises:
        TypeError, InputError, mgid.ops._dispatch.FusedOpsUnavailableError: as `memory_read`.
    """
    check_query_items(query, items)
    with torch.no_grad():
        if use_fused(query.device):
            return torch.ops.mgid.memory_update_stats(query, items, max_over_assigned)
        return reference.memory_update_stats(query, items, max_over_assigned)


def memory_update(query: torch.Tensor, items: torch.Tensor, max_over_assigned: bool = False) -> torch.Tensor:
    """MNAD top-1 update: query (B, C, H, W), items (M, C) -> new unit-norm items (M, C).

    Each query is assigned to its most similar item; item m moves to
    normalize(P[m] + sum over its queries of exp(S[k,m] - max S[:,m]) q_hat_k), the max over all
    queries (public code) or over the assigned ones (``max_over_assigned``, the paper). No
    gradient, no host synchronisation, deterministic.

    Args:
        query: (B, C, H, W) floating.
        items: (M, C) floating, on the query's device.
        max_over_assigned: normalise by the max over the assigned queries (the paper).

    Returns:
        The new unit-norm items, (M, C).

    Raises:
        TypeError, InputError, mgid.ops._dispatch.FusedOpsUnavailableError: as `memory_read`.
    """
    check_query_items(query, items)
    with torch.no_grad():
        if use_fused(query.device):
            return torch.ops.mgid.memory_update(query, items, max_over_assigned)
        return reference.memory_update(query, items, max_over_assigned)


def memory_losses(query: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The MNAD memory losses of a query.

    compactness = mean over queries and channels of (q_hat - P[top1])^2; separateness =
    TripletMarginLoss(margin 1, eps 1e-6)(q_hat, P[top1], P[top2]) (MNAD).

    Args:
        query: (B, C, H, W) floating.
        items: (M, C) floating with M >= 2, on the query's device; they get no gradient.

    Returns:
        ``(compactness, separateness)``, both 0-dim and differentiable in ``query``.

    Raises:
        InputError: fewer than 2 items, and as `memory_read` (a ``ValueError``).
        TypeError, mgid.ops._dispatch.FusedOpsUnavailableError: as `memory_read`.
    """
    check_query_items(query, items)
    if items.shape[0] < 2:
        raise InputError(f"memory_losses needs at least 2 memory items (separateness uses the top two), got "
                         f"items of shape {tuple(items.shape)}")
    if use_fused(query.device):
        return torch.ops.mgid.memory_losses(query, items.detach())
    return reference.memory_losses(query, items)


class UpdateStats(NamedTuple):
    """What the MNAD update reduces over queries (and ranks): col_max (M,), weighted_sum (M, C).

    See `memory_update_stats`; `finish_update` turns them into the new items.
    """

    col_max: torch.Tensor
    weighted_sum: torch.Tensor


class MemoryStep(NamedTuple):
    """Result of `memory_step`.

    read: (B, 2C, H, W), as `memory_read`. items: the updated items (M, C) (``update="items"``),
    the `UpdateStats` (``update="stats"``) or None (``update="none"``). compactness,
    separateness: 0-dim, as `memory_losses`, or None without ``with_losses``.
    """

    read: torch.Tensor
    items: torch.Tensor | UpdateStats | None
    compactness: torch.Tensor | None
    separateness: torch.Tensor | None


UPDATE_MODES = ("items", "stats", "none")


def finish_update(items: torch.Tensor, stats: UpdateStats) -> torch.Tensor:
    """New unit-norm items ``normalize(P + weighted_sum)``, in the items' dtype; no gradient.

    Args:
        items: the current items P, (M, C).
        stats: the (all-reduced) `UpdateStats`.

    Returns:
        The new items, (M, C).
    """
    with torch.no_grad():
        return reference.memory_update_finish(items, stats.weighted_sum)


def memory_step(
    query: torch.Tensor,
    items: torch.Tensor,
    *,
    grad_through_weights: bool = False,
    max_over_assigned: bool = False,
    with_losses: bool = True,
    update: Literal["items", "stats", "none"] = "items",
) -> MemoryStep:
    """Read, losses and update of the memory in one pass: query (B, C, H, W), items (M, C).

    Equal to `memory_read`, `memory_losses` and `memory_update` (or
    `memory_update_stats` with ``update="stats"``, what a multi-process update all-reduces)
    called separately on the same inputs, but the compiled kernels normalise each query and score
    it against the items once for all three, and one backward pass returns the query's gradient
    of the read and both losses. The read and the losses are differentiable in ``query``; items
    get no gradient; the update statistics carry none.

    Args:
        query: (B, C, H, W) floating.
        items: (M, C) floating, on the query's device (M >= 2 with ``with_losses``).
        grad_through_weights: as `memory_read`.
        max_over_assigned: as `memory_update`.
        with_losses: also compute the compactness and separateness losses.
        update: ``"items"`` (the new items), ``"stats"`` (the `UpdateStats`) or ``"none"``.

    Returns:
        The `MemoryStep`.

    Raises:
        InputError: an unknown ``update``, fewer than 2 items with losses, and as `memory_read`
            (a ``ValueError``).
        TypeError, mgid.ops._dispatch.FusedOpsUnavailableError: as `memory_read`.
    """
    check_query_items(query, items)
    if update not in UPDATE_MODES:
        raise InputError(f"memory_step: update must be one of {UPDATE_MODES}, got {update!r}")
    if with_losses and items.shape[0] < 2:
        raise InputError(f"memory_step with losses needs at least 2 memory items (separateness uses the top two), "
                         f"got items of shape {tuple(items.shape)}")
    with_update = update != "none"
    if use_fused(query.device):
        read, compactness, separateness, col_max, weighted_sum, _nearest = torch.ops.mgid.memory_step(
            query, items.detach(), grad_through_weights, max_over_assigned, with_losses, with_update)
    else:
        read, compactness, separateness, col_max, weighted_sum = reference.memory_step(
            query, items, grad_through_weights, max_over_assigned, with_losses, with_update)
    stats = UpdateStats(col_max.detach(), weighted_sum.detach())
    new_items: torch.Tensor | UpdateStats | None = None
    if update == "items":
        new_items = finish_update(items, stats)
    elif update == "stats":
        new_items = stats
    if not with_losses:
        compactness = separateness = None
    return MemoryStep(read, new_items, compactness, separateness)
