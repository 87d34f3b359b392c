"""``mgid bench``: the operator benchmark of the source tree (``python -m benchmarks.bench_ops``)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from mgid.cli import common

#: The operator benchmark: a module of the source tree's ``benchmarks`` package, not of the installed ``mgid``.
BENCH_MODULE = "benchmarks.bench_ops"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid bench`` to ``sub``: every argument after ``bench`` (``-h`` included) goes to the benchmark."""
    p = sub.add_parser("bench", add_help=False, prefix_chars="+",  # no option of its own: -h and --x pass through
                       help="benchmark the memory/whitening ops (python -m benchmarks.bench_ops of the source tree; "
                            "options passed through, see `mgid bench --help`)",
                       description="Runs python -m benchmarks.bench_ops with every argument passed through.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(run=run, prog=p.prog)


def bench_source_tree() -> Path | None:
    """The folder holding the ``benchmarks`` package: the checkout this ``mgid`` was imported from (a source tree
    or an editable install), else the current folder; None where neither has it (a normal install run elsewhere)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "benchmarks" / "__init__.py").is_file() and (root / "benchmarks" / "bench_ops.py").is_file():
            return root
    return None


def run(args: argparse.Namespace) -> int:
    """Run the benchmark with ``args.args`` in this Python, the source tree first on ``PYTHONPATH``; its exit code.

    Raises:
        common.UsageError: No source tree has the benchmarks (a normal install run outside a checkout).
    """
    root = bench_source_tree()
    if root is None:
        raise common.UsageError("the benchmarks ship with the source tree only, not with an installed package: clone "
                                "the repository and run `mgid bench` (or `python -m benchmarks.bench_ops`) in the "
                                "checkout")
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.call([sys.executable, "-m", BENCH_MODULE, *args.args], env={**os.environ, "PYTHONPATH": path})
