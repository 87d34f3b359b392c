"""Checkpoints of a training run: the `Trainer`'s check of ``OUT``, its resume and its save.

`CheckpointingMixin` holds the `Trainer` methods that read and write ``OUT/checkpoints/last.*`` (and the
``step_XXXXXX.*`` copies) through `mgid.checkpoint`: what a checkpoint's meta carries (the config, the step,
the run length, the gradient scaler, the last validations, the BatchNorm recalibration, the RNG states
saved by `mgid.checkpoint.save_checkpoint`) and how a resume puts it back (`set_rng_state`); and
`initial_state`, the weights a fine-tuning run starts from.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from mgid.checkpoint import (
    TRAINING_CHECKPOINT_DIR,
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    locate_checkpoint,
    read_meta,
    save_checkpoint,
    set_rng_state,
)
from mgid.config_fields import ConfigError

CHECKPOINT_DIR = TRAINING_CHECKPOINT_DIR  # the run folder's checkpoint subfolder (checkpoint owns the path rules)
LAST = "last"


class CheckpointingMixin:
    """The checkpoint methods of `mgid.train.trainer.Trainer` (they use its net, optimizer, scaler, cfg, step...)."""

    def _check_out(self, resume: bool, overwrite: bool) -> None:
        existing = checkpoint_paths(self.ckpt_dir, LAST)["meta"]
        if resume:
            if not existing.is_file():
                raise CheckpointError(f"--resume: no checkpoint to continue in {self.ckpt_dir} ({existing.name} "
                                      f"missing); run without --resume to start, or point --out at the run")
            return
        if existing.is_file() and not overwrite:
            try:
                step = read_meta(existing).get("step", "?")
            except CheckpointError:
                step = "?"
            raise ConfigError(f"{self.out} already holds a run (checkpoint at step {step}); pass --resume to "
                              f"continue it, --overwrite to start afresh there, or choose another --out")

    def _load(self, ckpt: Any) -> None:
        meta = ckpt.meta
        try:
            self.net.load_state_dict(ckpt.model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{ckpt.paths['model']} does not fit the configured model: {exc}") from exc
        if ckpt.optimizer_state is None:
            raise CheckpointError(f"{ckpt.paths['optim']} is missing: cannot resume the optimiser exactly")
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        for group in self.optimizer.param_groups:  # the config's hyper-parameters win over the saved ones
            group.update(betas=self.cfg.optim.betas, eps=self.cfg.optim.eps, weight_decay=self.cfg.optim.weight_decay)
        self.step = int(meta["step"])
        self.bn_recalibrated = meta.get("bn_recalibrated")
        saved_spe = meta.get("steps_per_epoch")
        if saved_spe is not None and saved_spe != self.steps_per_epoch:
            self.log(f"warning: the checkpoint had {saved_spe} steps per epoch, the data now gives "
                     f"{self.steps_per_epoch}: the batch order will differ from an uninterrupted run")
        set_rng_state(meta["rng"])
        if self.scaler is not None and meta.get("grad_scaler"):
            self.scaler.load_state_dict(meta["grad_scaler"])
        self._last_ckpt_step = self.step
        self.log(f"resumed {self.ckpt_dir / LAST}.* at step {self.step} (epoch {self.step // self.steps_per_epoch})")

    def save(self) -> Path | None:
        """Write ``OUT/checkpoints/last.*`` (and a ``step_XXXXXX.*`` copy if configured); rank 0 only.

        Every rank must call it (BN statistics are averaged first); ranks other than 0 return None.
        """
        self._sync_for_output()
        self._last_ckpt_step = self.step
        if not self.is_main:
            return None
        names = [LAST] + ([f"step_{self.step:06d}"] if self.cfg.keep_step_checkpoints else [])
        meta = {"config": self.cfg.to_dict(), "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "ops_path": self.ops_path, "device": str(self.device), "world_size": self.dist.world_size,
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "validation": self.last_validation.to_dict() if self.last_validation else None,
                "validation_sets": {k: v.to_dict() for k, v in self.last_validations.items()},
                "bn_recalibrated": self.bn_recalibrated,
                # what auto resolved to on this machine: the record of how the weights were trained (the config
                # keeps "auto", so a rerun elsewhere chooses for its own CPU)
                "arithmetic": dataclasses.asdict(self.arithmetic)}
        paths = save_checkpoint(self.ckpt_dir, self.net, self.optimizer, meta, names)
        return paths["model"]


def initial_state(path: str | Path, model: Any) -> dict[str, torch.Tensor]:
    """The network state (weights, BatchNorm statistics, memory items) of checkpoint file ``path`` to start a
    run from (`TrainConfig.init_weights`), checked to be of the network ``model`` (a `ModelConfig`)."""
    folder, name = locate_checkpoint(path)
    ckpt = load_checkpoint(folder, name, with_optimizer=False, device="cpu")
    saved = ckpt.meta.get("config", {}).get("model")
    if saved is None:
        raise CheckpointError(f"{ckpt.paths['meta']} has no config.model section; cannot check its network")
    theirs = type(model).from_dict(saved)
    if theirs != model:
        changed = [f"{k}: {v!r} there, {getattr(model, k)!r} here" for k, v in dataclasses.asdict(theirs).items()
                   if v != getattr(model, k)]
        raise ConfigError(f"init_weights {path} holds another network (model.{'; model.'.join(changed)}); "
                          f"set the model options to the checkpoint's or start from other weights")
    return ckpt.model_state
