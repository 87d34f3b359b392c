"""MGID training, one job per module.

`mgid.train.trainer` (`Trainer`: set-up, loop, logs, checkpoints), `mgid.train.objective` (`MGIDObjective`, one
step's forward and loss; `optimizer_step`), `mgid.train.sampler` (batch order, learning rate, seeding),
`mgid.train.stopping` (signals, `NonFiniteLossError`, `TrainingInterrupted`), `mgid.train.validation`,
`mgid.train.bn_recalibration`, `mgid.train.distributed` (torchrun/DDP), `mgid.train.finetune`
(``mgid finetune``) and `mgid.train.cli` (``train.py`` / ``mgid train``). ``--resume`` continues a run exactly.
"""
from mgid.train.trainer import Trainer, TrainResult

__all__ = ["Trainer", "TrainResult"]
