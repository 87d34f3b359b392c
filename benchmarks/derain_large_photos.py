#!/usr/bin/env python
"""``mgid derain`` on large photos under a memory budget: does it finish, and what does it take?

For each ``--megapixels`` size a 4:3 photo (random pixels, JPEG) is de-rained by the ``mgid derain`` command in a
fresh child process with ``--max-memory`` (or the default budget); the child first de-rains a 64x64 photo (imports
and first-call costs), resets its peak resident set size, then runs the large one. Reported: the exit code, the
peak RSS growth of the large run (the command as a whole: reading the JPEG, de-raining, writing), the wall time,
and what ``--tile auto`` planned (the command's own line). ``--narrow C`` uses a network of C channels with random
weights instead of the shipped one: the image-sized buffers (what limits the largest photos) are the same, the
time is a fraction (a 100-megapixel photo through the shipped network takes over 5 minutes of one core).

Writes ``derain_large_photos_<UTC timestamp>.json`` / ``.md`` under ``--out`` and prints the markdown.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import log

CHILD = '''
import re, sys
from pathlib import Path
import mgid.cli as cli
def rss(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
small, large, out, weights, budget = sys.argv[1:6]
extra = ["--max-memory", budget] if budget != "auto" else []
def derain(src, dst):
    return cli.main(["derain", src, dst, "--weights", weights, "--device", "cpu", "--quiet", *extra])
derain(small, out + "_warm")
Path("/proc/self/clear_refs").write_text("5")
before = rss("VmRSS")
code = derain(large, out)
print("RESULT", code, rss("VmHWM") - before, flush=True)
'''


def make_photo(path: Path, megapixels: float) -> tuple[int, int]:
    """A 4:3 JPEG of random pixels of about ``megapixels``, written in bands (no full float copy); (W, H)."""
    import cv2
    import numpy as np

    h = int((megapixels * 1e6 * 3 / 4) ** 0.5) // 8 * 8
    w = h * 4 // 3 // 8 * 8
    rng = np.random.default_rng(0)
    image = np.empty((h, w, 3), np.uint8)
    for r0 in range(0, h, 512):
        image[r0:r0 + 512] = rng.integers(0, 256, image[r0:r0 + 512].shape, dtype=np.uint8)
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise RuntimeError(f"could not write {path}")
    return w, h


def weights_for(args: argparse.Namespace, folder: Path) -> str:
    """The shipped weights, or (``--narrow C``) a C-channel network with random weights saved in ``folder``."""
    if not args.narrow:
        from mgid.derain.derainer import DEFAULT_WEIGHTS

        return str(DEFAULT_WEIGHTS)
    import dataclasses

    import torch

    from mgid.checkpoint import save_checkpoint
    from mgid.derain.derainer import DEFAULT_WEIGHTS, load_network
    from mgid.models import MGIDNet

    torch.manual_seed(0)
    config = dataclasses.replace(load_network(DEFAULT_WEIGHTS).config, channels=args.narrow)
    return str(save_checkpoint(folder, MGIDNet(config), None, {"config": {"model": config.to_dict()}},
                               names=("narrow",))["model"])


def planned_tile(weights: str, max_memory: str, width: int, height: int) -> int | None:
    """The tile ``--tile auto`` picks for the photo with ``--max-memory`` (a fixed budget gives the command's
    own choice; with ``auto`` the available memory of this moment)."""
    from mgid.derain.derainer import load_model
    from mgid.derain.memory_budget import parse_bytes

    derainer = load_model(weights, "cpu", max_memory=None if max_memory == "auto" else parse_bytes(max_memory))
    return derainer.auto_tile(1, height, width)


def run(args: argparse.Namespace) -> dict[str, Any]:
    env = harness.environment()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mgid-large-") as tmp:
        folder = Path(tmp)
        weights = weights_for(args, folder)
        small = folder / "small" / "small.jpg"
        small.parent.mkdir()
        make_photo(small, 0.004)
        for mp in args.megapixels:
            src = folder / f"in_{mp:g}" / "photo.jpg"
            src.parent.mkdir()
            w, h = make_photo(src, mp)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", CHILD, str(small.parent), str(src.parent),
                                   str(folder / f"out_{mp:g}"), weights, args.max_memory], capture_output=True,
                                  text=True)
            wall = time.perf_counter() - t0
            found = re.search(r"^RESULT (-?\d+) (\d+)$", proc.stdout, re.M)
            plan = next((line for line in proc.stderr.splitlines() if "tiles only where needed" in line), "")
            row = {"size": f"{w}x{h}", "megapixels": round(w * h / 1e6, 2), "max_memory": args.max_memory,
                   "exit_code": int(found.group(1)) if found else proc.returncode,
                   "growth_bytes": int(found.group(2)) if found else None, "wall_seconds": round(wall, 1),
                   "tile": planned_tile(weights, args.max_memory, w, h),
                   "plan": plan[plan.find("tiles only where needed"):].strip(),
                   "stderr_tail": "" if found else proc.stderr[-1500:]}
            rows.append(row)
            log(f"  {w}x{h}: exit {row['exit_code']}, +{(row['growth_bytes'] or 0) / 2**30:.2f} GB, {wall:.0f} s")
            src.unlink()
    return {"command": " ".join(["python -m benchmarks.derain_large_photos", *args.argv]), "environment": env,
            "settings": {"megapixels": args.megapixels, "max_memory": args.max_memory, "narrow": args.narrow},
            "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    net = f"a {cfg['narrow']}-channel network with random weights" if cfg["narrow"] else "the shipped weights"
    lines = ["# `mgid derain` on large photos under a memory budget", "", f"`{report['command']}`", "",
             f"{harness.provenance(env)}. Network: {net}; "
             f"`--max-memory {cfg['max_memory']}`; one torch thread. Peak RSS growth of the whole command (read, "
             f"de-rain, write) in a fresh process after a first small photo.", "",
             "| photo | MP | exit code | peak RSS growth | wall time | tile `--tile auto` chose | how it plans |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        growth = "—" if r["growth_bytes"] is None else f"{r['growth_bytes'] / 2**30:.2f} GB"
        tile = "whole image" if r["tile"] is None else f"{r['tile']} px"
        lines.append(f"| {r['size']} | {r['megapixels']} | {r['exit_code']} | {growth} | {r['wall_seconds']:.0f} s | "
                     f"{tile} | {r['plan']} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.derain_large_photos", description=__doc__.split("\n\n")[0])
    p.add_argument("--megapixels", nargs="+", type=float, default=[12.0], metavar="MP", help="photo sizes [12]")
    p.add_argument("--max-memory", default="4G", help="--max-memory of mgid derain, or auto [4G]")
    p.add_argument("--narrow", type=int, default=0, metavar="C",
                   help="a C-channel network with random weights instead of the shipped one [0: shipped]")
    p.add_argument("--out", default=str(harness.RESULTS), help="output folder [benchmarks/results]")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    harness.publish(args.out, "derain_large_photos", report, markdown(report))
    return 0 if all(r["exit_code"] == 0 for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
