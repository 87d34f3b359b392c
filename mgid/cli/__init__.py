"""The ``mgid`` command line, one module per command.

Each command module (`mgid.cli.derain`, `mgid.cli.evaluate`, ...) has ``register(subparsers)``, which adds its
parser and sets ``run`` (the function called with the parsed options; it returns the exit code) and ``prog`` (its
name in messages), and the run function itself. `mgid.cli.common` holds the options, messages and exit codes they
share and `mgid.cli.common.run_command`, the one error handler.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mgid import __version__
from mgid.cli.common import run_command

#: The commands by name, in ``--help`` order: the module of each (imported only when its parser is needed: the
#: train parsers import the trainer, which ``mgid web``'s long-lived process and ``mgid derain`` never use).
COMMANDS: dict[str, str] = {name: f"mgid.cli.{name}" for name in (
    "train", "finetune", "data", "derain", "export", "evaluate", "heldout", "web", "bench", "info")}


def build_parser(commands: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``mgid`` parser.

    Args:
        commands: Names of the commands to register (None: all of `COMMANDS`).

    Returns:
        The parser; its parsed options carry ``run`` and ``prog`` of the chosen command.
    """
    parser = argparse.ArgumentParser(prog="mgid", description="MGID: memory-guided image de-raining trained on "
                                                              "time-lapse data.")
    parser.add_argument("--version", action="version", version=f"mgid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if commands is None else commands:
        importlib.import_module(COMMANDS[name]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mgid`` script: parse ``argv`` (default: ``sys.argv[1:]``) and run the command.

    Returns:
        The command's exit code; 2 with a one-line ``PROG: error: MESSAGE`` for bad input (`run_command`).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    named = [argv[0]] if argv and argv[0] in COMMANDS else None
    args = build_parser(named).parse_args(argv)
    return run_command(args.run, args, args.prog)
