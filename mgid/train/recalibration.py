"""BatchNorm recalibration of a training run's final weights (``bn_recalibration_batches``).

`BNRecalibrationMixin` holds the `Trainer` methods that draw the recalibration batches from an epoch of
the training data of their own and re-estimate the running statistics with `mgid.bn_recalibration`.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from mgid.bn_recalibration import recalibrate_batchnorm
from mgid.train.objective import autocast_context

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


class BNRecalibrationMixin:
    """The BatchNorm-recalibration methods of `mgid.train.trainer.Trainer` (they use its net, data, dist...)."""

    def recalibration_batches(self) -> Iterator[torch.Tensor]:
        """`recalibration_batches` of the run's training set, this rank's slice, on the run's device."""
        cfg = self.cfg
        for batch in recalibration_batches(self.train_set, cfg.batch_size, cfg.bn_recalibration_batches,
                                           self.sampler.per_rank_batch, self.dist.rank):
            yield batch.to(self.device, memory_format=self.memory_format)

    def recalibrate_batchnorm(self) -> None:
        """Re-estimate the BatchNorm running statistics for the final weights (`mgid.bn_recalibration`);
        validation and the checkpoint that follow see them. Every rank calls it."""
        used = recalibrate_batchnorm(self.net, self.recalibration_batches(),
                                     autocast_context(self.device, self.precision))
        self._sync_for_output()
        self.bn_recalibrated = [self.step, self.cfg.bn_recalibration_batches]
        self._last_val_step = self._last_ckpt_step = -1  # validate and save the recalibrated network
        self.log(f"[step {self.step}] BatchNorm statistics re-estimated for the final weights over {used // 2} "
                 f"training batches (both frames of each pair)")
