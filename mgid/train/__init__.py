"""MGID training, one job per module:

* `mgid.train.sampler` -- the batch order (`EpochBatchSampler`), the learning-rate schedule, seeding;
* `mgid.train.stopping` -- SIGTERM/SIGINT handling (`StopRequest`), `NonFiniteLossError`, `TrainingInterrupted`;
* `mgid.train.objective` -- `MGIDObjective(net, criterion)`: both frames and the loss in one forward,
  returning ``(total, terms, out1)`` (what DDP wraps; ``--compile`` compiles the network inside it);
* `mgid.train.step` -- the optimisation step (`compute_loss`, `optimizer_step`; `train_step` for the benchmarks);
* `mgid.train.validation` -- validation on the held-out paired sets and the comparison picture;
* `mgid.train.trainer` -- `Trainer`, the loop and logs;
* `mgid.train.checkpointing` -- the `Trainer`'s checkpoint save and resume (`CheckpointingMixin`);
* `mgid.train.recalibration` -- the `Trainer`'s BatchNorm recalibration of the final weights;
* `mgid.train.cli` -- the command line of ``train.py`` / ``mgid train`` and the resume policy (the config
  fields marked ``RESUME_MAY_CHANGE`` in `mgid.config`).

``--resume`` continues a run exactly: the same weights, memory items, optimiser state, RNG states and
batches as an uninterrupted run. Scaling and robustness: ``docs/SCALING.md``.
"""
from mgid.train.cli import add_train_arguments, build_parser, config_from_args, main, run_from_args
from mgid.train.objective import AUTOCAST_DTYPES, MGIDObjective, PairForward, autocast_context
from mgid.train.sampler import EpochBatchSampler, learning_rate, seed_everything
from mgid.train.step import compute_loss, optimizer_step, train_step
from mgid.train.stopping import (
    EXIT_INTERRUPTED,
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    nonfinite_error,
)
from mgid.train.trainer import Trainer, TrainResult
from mgid.train.validation import ValidationResult, build_paired_sets, validate, write_comparison

__all__ = [
    "AUTOCAST_DTYPES", "EXIT_INTERRUPTED", "EpochBatchSampler", "MGIDObjective", "NonFiniteLossError", "PairForward",
    "StopRequest", "TrainResult", "Trainer", "TrainingInterrupted", "ValidationResult", "add_train_arguments",
    "autocast_context", "build_paired_sets", "build_parser", "compute_loss", "config_from_args", "learning_rate",
    "main", "nonfinite_error", "optimizer_step", "run_from_args", "seed_everything", "train_step", "validate",
    "write_comparison",
]
