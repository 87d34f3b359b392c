"""BatchNorm recalibration of a training run's final weights (``bn_recalibration_batches``).

`BNRecalibrationMixin` holds the `Trainer` methods that draw the recalibration batches from an epoch of
the training data of their own and re-estimate the running statistics with `mgid.bn_recalibration`.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from mgid.bn_recalibration import recalibrate_batchnorm
from mgid.train.objective import autocast_context

#: Epoch of the training data that BatchNorm recalibration draws its batches from (never trained on).
RECALIBRATION_EPOCH = 1_000_000


class BNRecalibrationMixin:
    """The BatchNorm-recalibration methods of `mgid.train.trainer.Trainer` (they use its net, data, dist...)."""

    def recalibration_batches(self) -> Iterator[torch.Tensor]:
        """``cfg.bn_recalibration_batches`` batches of training frames (both frames of each pair), this rank's
        slice, from an epoch of their own (`RECALIBRATION_EPOCH`): the same batches whenever it runs."""
        cfg, per = self.cfg, self.sampler.per_rank_batch
        self.train_set.set_epoch(RECALIBRATION_EPOCH)
        n = len(self.train_set)
        for b in range(cfg.bn_recalibration_batches):
            first = b * cfg.batch_size + self.dist.rank * per
            items = [self.train_set[(first + i) % n] for i in range(per)]
            for key in ("frame1", "frame2"):
                yield torch.stack([it[key] for it in items]).to(self.device, memory_format=self.memory_format)

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
