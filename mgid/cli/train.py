"""``mgid train`` and ``train.py``: train MGID; the options, the resume policy and the exit codes of training."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mgid.checkpoint import TRAINING_CHECKPOINT_DIR, CheckpointError, checkpoint_paths, read_meta
from mgid.cli import common
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

#: Exit code of a run stopped by a non-finite loss (the last good checkpoint is kept).
EXIT_NON_FINITE = 1
DESCRIPTION = ("Train MGID on time-lapse pairs (default: the embedded synthetic set, no download).\n"
               "Settings: defaults (the paper) < --config NAME|FILE.yaml < the options below.")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``train.py`` / ``mgid train`` / ``mgid finetune``: --config, --resume, ... and one per config
    field."""
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid train``'s parser to ``sub``."""
    p = sub.add_parser("train", help="train MGID (same options as train.py)", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(run=run, prog=p.prog)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``train.py`` (named ``prog``)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION,
        epilog="examples:\n  train.py --config quick\n  train.py --config paper --data /data/mgid --out runs/paper\n"
               "  train.py --config quick --max-steps 300 --resume")
    add_train_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> TrainConfig:
    """The run's config: the named config or YAML file and the options; with ``--resume``, on top of the saved
    config.

    Resuming may change the fields marked ``RESUME_MAY_CHANGE`` in `mgid.config.train_config` (run length, logging,
    checkpointing, devices) silently; other differences are logged through ``log`` as a warning.

    Raises:
        CheckpointError: ``--resume`` without a checkpoint in ``--out``.
        ConfigError: ``--resume`` with a different model, or bad settings.
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
    notable = {k: v for k, v in changes.items() if k not in resume_may_change()}
    if notable:
        log("warning: resuming with changed settings (the run will differ from an uninterrupted one): "
            + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in notable.items()))
    return resumed


def run(args: argparse.Namespace, prepare: Callable[[TrainConfig], TrainConfig] | None = None) -> int:
    """Train as the parsed ``args`` ask (or print the config with ``--print-config``).

    Args:
        args: Parsed options of `add_train_arguments` (and ``prog``, the name in messages).
        prepare: Turns the resolved config into the one to run (``mgid finetune``: its data and initial weights).

    Returns:
        0 done; `EXIT_NON_FINITE` after a non-finite loss (the last good checkpoint is kept); 128 + signal (143
        SIGTERM, 130 SIGINT) when a signal stopped the run after it wrote a checkpoint.

    Raises:
        MgidError: Bad settings, data or checkpoint (`mgid.cli.common.run_command` reports them: exit code 2).
    """
    cfg = config_from_args(args)
    if prepare is not None:
        cfg = prepare(cfg)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite)
    try:
        trainer.run()
    except NonFiniteLossError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return EXIT_NON_FINITE
    except TrainingInterrupted as exc:
        print(f"{args.prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        trainer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``train.py``: parse the command line and train; returns the exit code."""
    parser = build_parser("train.py")
    args = parser.parse_args(argv)
    args.prog = parser.prog
    return common.run_command(run, args, args.prog)
