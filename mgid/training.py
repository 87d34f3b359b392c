"""Compatibility module: MGID training now lives in the `mgid.train` package (see its docstring).

Every name this module used to define is re-exported here, so ``from mgid.training import Trainer,
train_step, main, ...`` (tests, benchmarks, ``train.py``) keeps working.
"""
from mgid.config import NAMED_CONFIGS  # noqa: F401
from mgid.data.timelapse import HELDOUT_SETS  # noqa: F401
from mgid.devices import resolve_device  # noqa: F401
from mgid.precision import cpu_has_native_bf16, resolve_channels_last, resolve_precision  # noqa: F401
from mgid.train.cli import add_train_arguments, build_parser, config_from_args, main, run_from_args  # noqa: F401
from mgid.train.objective import AUTOCAST_DTYPES, MGIDObjective, PairForward, _as_float, autocast_context  # noqa: F401
from mgid.train.sampler import _ORDER_STREAM, EpochBatchSampler, learning_rate, seed_everything  # noqa: F401
from mgid.train.step import compute_loss, optimizer_step, train_step  # noqa: F401
from mgid.train.stopping import (  # noqa: F401
    EXIT_INTERRUPTED,
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    nonfinite_error,
)
from mgid.train.trainer import (  # noqa: F401
    CHECKPOINT_DIR,
    COMPARE_FILE,
    LAST,
    RECALIBRATION_EPOCH,
    RUN_OUTPUTS,
    SAMPLES_DIR,
    TB_DIR,
    TB_GRID_ROWS,
    VALIDATION_LOG,
    Trainer,
    TrainResult,
    _NullWriter,
)
from mgid.train.validation import ValidationResult, build_paired_sets, validate, write_comparison  # noqa: F401
