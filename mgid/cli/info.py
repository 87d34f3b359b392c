"""``mgid info``: the build, the CPU, what ``auto`` picks, the shipped weights' hash."""
from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid info``'s parser to ``sub``."""
    p = sub.add_parser("info", help="the build of the kernels, the CPU and its flags, what auto picks for training "
                                    "and inference, the shipped weights' hash",
                       description="Prints how mgid was built (kernels, CUDA arch list, CPU ISA copy), the CPU and "
                                   "its flags, what `auto` resolves to for training and inference (device, ops, "
                                   "arithmetic), the memory available and the shipped weights' SHA-256.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """Print the report (as JSON with ``--json``); the exit code (0)."""
    from mgid import info

    report = info.collect()
    print(json.dumps(report, indent=1) if args.json else info.format_report(report))
    return 0
