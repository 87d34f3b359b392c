"""The command line of ``train.py`` and ``mgid train``: options, the resume policy, exit codes."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mgid.checkpoint import TRAINING_CHECKPOINT_DIR, CheckpointError, checkpoint_paths, read_meta
from mgid.config.fields import ConfigError, overrides_from_args
from mgid.config.train_config import (
    NAMED_CONFIGS,
    TrainConfig,
    add_config_arguments,
    diff,
    resolve_config,
    resume_may_change,
    to_yaml,
)
from mgid.train.stopping import NonFiniteLossError, TrainingInterrupted
from mgid.train.trainer import LAST, Trainer, check_out_folder


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train.py`` / ``mgid train``: --config, --resume, ... and one per config field."""
    parser.add_argument("--config", metavar="NAME|FILE.yaml",
                        help=f"a named config ({', '.join(NAMED_CONFIGS)}) or a YAML file (as --print-config writes); "
                             f"options given on the command line override it [default: the paper's settings]")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in OUT/checkpoints/last.* exactly (step, weights, memory items, "
                             "optimiser, RNG states, data order); its saved config is the base for other options")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in an OUT that already holds one (deletes its checkpoints/, tb/ "
                             "and samples/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    add_config_arguments(parser)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MGID on time-lapse pairs (default: the embedded synthetic set, no download).\n"
                    "Settings: defaults (the paper) < --config NAME|FILE.yaml < the options below.",
        epilog="examples:\n  train.py --config quick\n  train.py --config paper --data /data/mgid --out runs/paper\n"
               "  train.py --config quick --max-steps 300 --resume")
    add_train_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> TrainConfig:
    """The run's config: named config/YAML and options; with --resume, on top of the saved config.

    Resuming may change the fields marked ``RESUME_MAY_CHANGE`` in `mgid.config.train_config` (run length, logging,
    checkpointing, devices) silently; a different model is refused,
    other differences are listed (the run then differs from an uninterrupted one).
    """
    overrides = overrides_from_args(args)
    cfg = resolve_config(args.config, overrides)
    if not args.resume:
        return cfg  # a fresh run's --out is checked by the Trainer, first thing
    check_out_folder(cfg.out)  # --out naming a file: said as such, not as a missing checkpoint
    meta_path = checkpoint_paths(Path(cfg.out) / TRAINING_CHECKPOINT_DIR, LAST)["meta"]
    if not meta_path.is_file():
        raise CheckpointError(f"--resume: no checkpoint in {meta_path.parent} ({meta_path.name} missing); run without "
                              f"--resume to start, or point --out at the run")
    saved = TrainConfig.from_dict(read_meta(meta_path)["config"])
    base = saved.to_dict()
    base["out"] = cfg.out  # the run may have been moved
    resumed = resolve_config(args.config, overrides, base=base)
    changes = diff(saved, resumed)
    changes.pop("out", None)
    model_changes = [k for k in changes if k.startswith("model.")]
    if model_changes:
        raise ConfigError(f"--resume cannot change the model ({', '.join(model_changes)}); the checkpoint's "
                          f"weights would not fit. Drop those options or start a new run with another --out")
    harmless = resume_may_change()  # the fields marked RESUME_MAY_CHANGE in mgid.config.train_config
    notable = {k: v for k, v in changes.items() if k not in harmless}
    if notable:
        log("warning: resuming with changed settings (the run will differ from an uninterrupted one): "
            + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in notable.items()))
    return resumed


def run_from_args(args: argparse.Namespace, prog: str = "train.py",
                  prepare: Callable[[TrainConfig], TrainConfig] | None = None,
                  errors: tuple[type[Exception], ...] = ()) -> int:
    """Run what parsed ``args`` ask for; returns the exit code (errors are printed, not raised).

    ``prepare`` turns the resolved config into the one to run (``mgid finetune``: its data and initial
    weights), and ``errors`` are its exceptions to report as bad settings.
    Exit codes: 0 done; 1 non-finite loss (the last good checkpoint is kept); 2 bad settings or
    checkpoint; 128 + signal (143 SIGTERM, 130 SIGINT) stopped by a signal after writing a checkpoint.
    """
    try:
        cfg = config_from_args(args)
        if prepare is not None:
            cfg = prepare(cfg)
        if args.print_config:
            print(to_yaml(cfg), end="")
            return 0
        trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    except (ConfigError, CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, RuntimeError,
            *errors) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except NonFiniteLossError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except TrainingInterrupted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        trainer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``train.py``: parse the command line and train; returns the exit code."""
    args = build_parser("train.py").parse_args(argv)
    return run_from_args(args, "train.py")
