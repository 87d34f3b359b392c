"""The batch order and the learning-rate schedule: both pure functions of the seed and the step.

`EpochBatchSampler` fixes each epoch's batches by ``(seed, epoch)`` (and slices them per rank), so a
resumed run sees the batches an uninterrupted one would; `learning_rate` needs no scheduler state;
`seed_everything` seeds the global RNGs (the network's initial weights use torch's).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from mgid.config.fields import ConfigError
from mgid.config.train_config import OptimConfig

#: Seed stream of the batch order, kept apart from the data set's per-index streams.
_ORDER_STREAM = 101


def seed_everything(seed: int) -> None:
    """Seed python's, NumPy's and torch's global RNGs (the network's initial weights use torch's).

    Args:
        seed: the seed; NumPy gets its low 32 bits.
    """
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a random permutation fixed by ``(seed, epoch)``, the last partial batch dropped.

    ``set_epoch(epoch, start)`` selects the epoch and skips its first ``start`` batches, so a
    resumed run sees exactly the batches an uninterrupted run would. The order does not depend on
    any global RNG or on the number of DataLoader workers.

    Distributed: ``batch_size`` is the GLOBAL batch; rank ``rank`` of ``world_size`` yields the
    contiguous slice ``[rank * b, (rank + 1) * b)`` (b = batch_size / world_size) of each global
    batch, so the ranks' slices concatenated in rank order are the single-process batch, and the
    order (hence exact resume) does not depend on the number of processes.

    Args:
        length: pairs in the data set.
        batch_size: the global batch (all ranks together).
        seed: fixes every epoch's permutation (with the epoch).
        rank: this process's rank. Default 0.
        world_size: the number of processes. Default 1.

    Raises:
        ConfigError: ``length`` is below ``batch_size``, ``rank`` is not in ``[0, world_size)``, or
            ``batch_size`` is not a multiple of ``world_size``.
    """

    def __init__(self, length: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if length < batch_size:
            raise ConfigError(f"the training set has {length} pairs, fewer than batch_size {batch_size}: lower "
                              f"--batch_size or add data")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size {world_size})")
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} (the global batch) must be a multiple of the number of "
                              f"processes {world_size}")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    @property
    def per_rank_batch(self) -> int:
        """Pairs in each batch this rank yields: ``batch_size / world_size``."""
        return self.batch_size // self.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Global batches in an epoch: ``length // batch_size`` (the last partial batch is dropped)."""
        return self.length // self.batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate and skip its first ``start`` batches (a resumed run's position).

        Args:
            epoch: the (0-based) epoch.
            start: batches of that epoch already done. Default 0.
        """
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> np.ndarray:
        """Give the permutation of the data set's indices used in ``epoch``.

        Args:
            epoch: the (0-based) epoch.

        Returns:
            (length,) int64 array: a permutation of ``range(length)`` fixed by ``(seed, epoch)``.
        """
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, _ORDER_STREAM, epoch])
        return rng.permutation(self.length)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        perm = self.order(self.epoch)
        per = self.per_rank_batch
        for b in range(self.start, self.batches_per_epoch):
            first = b * self.batch_size + self.rank * per
            yield perm[first:first + per].tolist()


def learning_rate(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Give the learning rate of ``step``: a pure function of the step, so resuming needs no scheduler state.

    Args:
        step: the (0-based) step.
        total_steps: the run's length in steps (the cosine schedule ends there).
        cfg: the optimiser settings: ``lr``, ``warmup_steps`` (a linear warm-up from ``lr / warmup_steps`` to
            ``lr``), ``schedule`` (``"constant"`` or ``"cosine"`` from ``lr`` down to ``min_lr``).

    Returns:
        The learning rate.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    done, length = step - cfg.warmup_steps, total_steps - cfg.warmup_steps
    progress = min(max(done, 0), length) / max(length, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
