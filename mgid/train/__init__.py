"""MGID training, one job per module:

* `mgid.train.sampler` -- the batch order (`EpochBatchSampler`), the learning-rate schedule, seeding;
* `mgid.train.stopping` -- SIGTERM/SIGINT handling (`StopRequest`), `NonFiniteLossError`, `TrainingInterrupted`;
* `mgid.train.objective` -- `MGIDObjective(net, criterion)`: both frames and the loss in one forward,
  returning ``(total, terms, out1)`` (what DDP wraps; ``--compile`` compiles the network inside it), and
  `optimizer_step` (backward and the optimiser): together one training step;
* `mgid.train.validation` -- validation on the held-out paired sets and the comparison picture;
* `mgid.train.bn_recalibration` -- BatchNorm statistics re-estimated for the final weights;
* `mgid.train.distributed` -- torchrun/DDP: the process group, the memory update across ranks;
* `mgid.train.trainer` -- `Trainer`: setting a run up, the loop, logs, checkpoints (through `mgid.checkpoint`);
* `mgid.train.finetune` -- ``mgid finetune``: the trainer on the user's own videos;
* `mgid.train.cli` -- the command line of ``train.py`` / ``mgid train`` and the resume policy (the config
  fields marked ``RESUME_MAY_CHANGE`` in `mgid.config.train_config`).

``--resume`` continues a run exactly: the same weights, memory items, optimiser state, RNG states and
batches as an uninterrupted run. Scaling and robustness: ``docs/SCALING.md``.
"""
from mgid.train.cli import main
from mgid.train.trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult", "main"]
