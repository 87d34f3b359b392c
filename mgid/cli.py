"""The ``mgid`` command line: ``mgid train ...``, ``mgid data synth --out DIR``.

Each command is a ``register(subparsers)`` function in `COMMANDS` that adds its parser and sets
``func`` (called with the parsed arguments, returns the exit code); a new command (derain,
evaluate, bench, ...) is one more function in that list.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Callable, Sequence

from mgid import __version__


def _train(args: argparse.Namespace) -> int:
    from mgid.training import run_from_args

    return run_from_args(args, "mgid train")


def register_train(sub: argparse._SubParsersAction) -> None:
    from mgid.training import add_train_arguments

    p = sub.add_parser("train", help="train MGID (same options as train.py)",
                       description="Train MGID on time-lapse pairs (default: the embedded synthetic set). Settings: "
                                   "defaults (the paper) < --config NAME|FILE.yaml < the options below.")
    add_train_arguments(p)
    p.set_defaults(func=_train)


def _data_synth(args: argparse.Namespace) -> int:
    from mgid.config import ConfigError, build_dataclass, merge, overrides_from_args, resolve_config
    from mgid.data import EmbeddedDataConfig, write_synthetic_dataset

    try:
        base = resolve_config(args.config).embedded if args.config else EmbeddedDataConfig()
        cfg = build_dataclass(EmbeddedDataConfig, merge(asdict(base), overrides_from_args(args)))
        summary = write_synthetic_dataset(args.out, config=cfg, seed=args.seed, overwrite=args.overwrite)
    except (ConfigError, FileExistsError, ValueError) as exc:
        print(f"mgid data synth: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary['files']} images to {summary['root']}: {summary['train_scenes']} training scenes, "
          f"{summary['val_scenes']} validation scenes ({summary['frames_per_scene']} frames of "
          f"{summary['size']}x{summary['size']} each), {summary['paired']} paired test images (paired/rain, "
          f"paired/norain)\ntrain on it: mgid train --data {summary['root']} --val_data {summary['root']}/paired")
    return 0


def register_data(sub: argparse._SubParsersAction) -> None:
    from mgid.config import NAMED_CONFIGS, add_config_arguments
    from mgid.data import EmbeddedDataConfig

    p = sub.add_parser("data", help="data sets: write the synthetic time-lapse set to disk",
                       description="Data set tools.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = data_sub.add_parser(
        "synth", help="write the embedded synthetic data set (scene folders + paired test set) to a folder",
        description="Write the embedded synthetic time-lapse set: OUT/train/<scene>/<frame>.png, "
                    "OUT/val/<scene>/<frame>.png and OUT/paired/{rain,norain}/ (Rain100L naming). "
                    "Settings: EmbeddedDataConfig defaults < --config's embedded section < the options below.")
    synth.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold a data set)")
    synth.add_argument("--seed", type=int, default=0, help="fixes scenes and rain [default: 0]")
    synth.add_argument("--config", metavar="NAME|FILE.yaml",
                       help=f"take the embedded data settings of a training config ({', '.join(NAMED_CONFIGS)} "
                            f"or a YAML file)")
    synth.add_argument("--overwrite", action="store_true", help="write into an OUT that already has a data set")
    add_config_arguments(synth, EmbeddedDataConfig)
    synth.set_defaults(func=_data_synth)


#: The subcommands, in --help order.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [register_train, register_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mgid", description="MGID: memory-guided image de-raining trained on "
                                                              "time-lapse data.")
    parser.add_argument("--version", action="version", version=f"mgid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mgid`` script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
