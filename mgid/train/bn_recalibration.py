"""Re-estimate a network's BatchNorm running statistics for its final weights.

`recalibrate_batchnorm` replaces the running mean and variance by a plain average over training batches with the
final weights (weights and memory items unchanged, nothing back-propagated); `recalibration_batches` draws those
batches from an epoch training never reaches. Why and what it gains: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from mgid.models import MGIDNet

#: Epoch of the training data that BatchNorm recalibration draws its batches from (never trained on).
RECALIBRATION_EPOCH = 1_000_000


def recalibration_batches(train_set: Any, batch_size: int, count: int, per_rank: int | None = None,
                          rank: int = 0) -> Iterator[torch.Tensor]:
    """``count`` batches of ``train_set``'s frames, frame 1 then frame 2 of each pair, (per_rank, 3, H, W) on
    the CPU: rank ``rank``'s slice of ``per_rank`` pairs (default the whole ``batch_size``) of each global batch,
    from an epoch of their own (`RECALIBRATION_EPOCH`), so the same batches whenever it runs."""
    per = batch_size if per_rank is None else per_rank
    train_set.set_epoch(RECALIBRATION_EPOCH)
    n = len(train_set)
    for b in range(count):
        first = b * batch_size + rank * per
        items = [train_set[(first + i) % n] for i in range(per)]
        for key in ("frame1", "frame2"):
            yield torch.stack([it[key] for it in items])


def batchnorm_layers(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer of ``net`` (SyncBatchNorm included)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_batchnorm(net: MGIDNet, batches: Iterable[torch.Tensor],
                          autocast: contextlib.AbstractContextManager | None = None) -> int:
    """Replace the running statistics of ``net``'s BatchNorm layers by their average over ``batches``.

    Args:
        net: the network; its train/eval mode and the layers' momentum are restored afterwards.
        batches: images (B, 3, H, W) in [-1, 1], on the network's device and memory format.
        autocast: the precision context the network trains in (statistics of the same arithmetic).

    Returns the number of batches used; with none, the statistics are left as they were.
    """
    layers = batchnorm_layers(net)
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers if m.track_running_stats]
    was_training = net.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    net.train()
    count = 0
    try:
        with autocast or contextlib.nullcontext():
            for images in batches:
                net(images, update_memory=False, memory_losses=False)
                count += 1
    finally:
        net.train(was_training)
        for m, (momentum, mean, var, tracked) in zip(layers, saved):
            m.momentum = momentum
            if count == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(tracked)
    return count
