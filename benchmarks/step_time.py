#!/usr/bin/env python
"""Seconds per training step of whichever ``mgid`` is importable, for comparing checkouts on one machine.

Times one training step as ``mgid train`` runs it: `mgid.train.objective.MGIDObjective` (both frames forward,
the loss), the finiteness check, then `mgid.train.objective.optimizer_step` (backward, Adam); a checkout from
before they existed is timed through its own single entry point, ``mgid.training.train_step``, which does the
same. With `TrainConfig`'s default network and objective (the paper's) at ``--batch`` pairs of ``--crop`` x
``--crop`` random frames, for each ``--variant`` (``fp32``, ``bf16``, ``fp32+cl``, ``bf16+cl``, ``auto`` when
this mgid has `mgid.precision.resolve_arithmetic`), it prints one JSON
line per variant with the CPU (`benchmarks.harness.cpu_info`). Run from the repository root::

    python -m benchmarks.step_time --variant auto

To time an older commit, build it in a worktree and put it first on the path, this checkout after it (for the
``benchmarks`` package), from a folder that holds no ``mgid`` (``python -m`` puts the current folder first)::

    git worktree add /tmp/old 48c4aba && (cd /tmp/old && MGID_FORCE_CPU=1 python setup.py build_ext --inplace)
    repo=$PWD; (cd /tmp && PYTHONPATH=/tmp/old:$repo python -m benchmarks.step_time --variant fp32)

The JSON line's ``mgid`` field says which checkout's package was timed. A checkout whose ``benchmarks/`` is a
package too (from issue 20 on) would shadow this one's: time it with its own ``step_time``.

Batches are made before timing (no data loading); the median of ``--steps`` steps after ``--warmup``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mgid
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet

try:
    from mgid.config.train_config import TrainConfig
    from mgid.train.objective import MGIDObjective, optimizer_step
except ImportError:  # a checkout from before issue 20 (e.g. 48c4aba): its config module and step function
    from mgid.config import TrainConfig

    MGIDObjective = optimizer_step = None


def cpu_line() -> str:
    """`benchmarks.harness.cpu_info`'s line; for an mgid older than `mgid.precision` (which the harness reads),
    that module of this checkout (the one this file is in), loaded by path: it imports only torch, and the
    older ``mgid`` on the path has no such module to import by name."""
    try:
        from benchmarks import harness

        return harness.cpu_info()["line"]
    except ImportError:
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parents[1] / "mgid" / "precision.py"
        spec = importlib.util.spec_from_file_location("mgid_precision_of_this_checkout", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.cpu_info().describe()


def variant_arithmetic(name: str) -> tuple[str, bool, str]:
    """(precision, channels_last, label) of a variant name."""
    if name == "auto":
        from mgid.precision import resolve_arithmetic

        a = resolve_arithmetic("auto", None, "cpu")
        return a.precision, a.channels_last, f"auto = {a.precision}{' + channels_last' if a.channels_last else ''}"
    precision, _, cl = name.partition("+")
    return precision, cl == "cl", name


def training_step(net: torch.nn.Module, criterion: MGIDLoss, optimizer: torch.optim.Optimizer, precision: str):
    """``step(frame1, frame2) -> (total, apply)``: the forward and loss of one training step, and ``apply`` for
    its backward and Adam (run after the finiteness check, as the loop does)."""
    if MGIDObjective is None:
        from mgid.training import train_step

        def old_step(a: torch.Tensor, b: torch.Tensor):
            total, _, _, apply = train_step(net, criterion, optimizer, a, b, precision=precision)
            return total, apply
        return old_step
    objective = MGIDObjective(net, criterion, precision)

    def new_step(a: torch.Tensor, b: torch.Tensor):
        total, _, _ = objective(a, b)
        return total, lambda: optimizer_step(optimizer, total)
    return new_step


def _setup(name: str, batch: int, crop: int, seed: int):
    """(step function, the two batches of frames, label) of a variant, seeded."""
    precision, channels_last, label = variant_arithmetic(name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cfg = TrainConfig()
    torch.manual_seed(seed)
    net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(seed)).to(memory_format=fmt).train()
    criterion = MGIDLoss(cfg.loss)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr)
    g = torch.Generator().manual_seed(seed + 1)
    frames = [((torch.rand(batch, 3, crop, crop, generator=g) * 2 - 1).contiguous(memory_format=fmt),
               (torch.rand(batch, 3, crop, crop, generator=g) * 2 - 1).contiguous(memory_format=fmt))
              for _ in range(2)]
    return training_step(net, criterion, optimizer, precision), frames, label


def _timed_step(step, frames, i: int, name: str) -> float:
    a, b = frames[i % 2]
    start = time.perf_counter()
    total, apply = step(a, b)
    if not torch.isfinite(total):
        raise RuntimeError(f"{name}: non-finite loss at step {i}")
    apply()
    return time.perf_counter() - start


def time_variant(name: str, batch: int, crop: int, warmup: int, steps: int, seed: int) -> dict:
    step, frames, label = _setup(name, batch, crop, seed)
    times = [_timed_step(step, frames, i, name) for i in range(warmup + steps)][warmup:]
    median = statistics.median(times)
    return {"variant": name, "label": label, "batch": batch, "crop": crop, "threads": torch.get_num_threads(),
            "median_s": round(median, 4), "images_per_s": round(2 * batch / median, 2),
            "steps": steps, "mgid": mgid.__file__, "cpu": cpu_line()}


def time_ops_paths(name: str, batch: int, crop: int, warmup: int, steps: int, seed: int) -> dict:
    """Seconds per training step with the fused ops and with the PyTorch reference, the two steps alternating
    (so load from other processes falls on both alike); ``ratio`` = reference / fused median."""
    from mgid import ops

    setups = {path: _setup(name, batch, crop, seed) for path in ("fused", "reference")}
    times: dict[str, list[float]] = {"fused": [], "reference": []}
    for i in range(warmup + steps):
        for path, (step, frames, _) in setups.items():
            with ops.use_reference(path == "reference"):
                elapsed = _timed_step(step, frames, i, f"{name} ({path})")
            if i >= warmup:
                times[path].append(elapsed)
    medians = {path: statistics.median(t) for path, t in times.items()}
    return {"variant": name, "label": setups["fused"][2], "batch": batch, "crop": crop,
            "threads": torch.get_num_threads(), "fused_path": ops.op_path("cpu"),
            "fused_s": round(medians["fused"], 4), "reference_s": round(medians["reference"], 4),
            "ratio": round(medians["reference"] / medians["fused"], 3), "steps": steps, "mgid": mgid.__file__,
            "cpu": cpu_line()}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", nargs="+", default=["fp32"], help="fp32, bf16, fp32+cl, bf16+cl, auto [fp32]")
    p.add_argument("--batch", type=int, default=8, help="pairs per step [8]")
    p.add_argument("--crop", type=int, default=128, help="crop side [128]")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps [2]")
    p.add_argument("--steps", type=int, default=5, help="timed steps; the median is reported [5]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-ops", action="store_true",
                   help="time each variant with the fused ops and with the PyTorch reference, alternating steps")
    args = p.parse_args()
    timer = time_ops_paths if args.compare_ops else time_variant
    for name in args.variant:
        print(json.dumps(timer(name, args.batch, args.crop, args.warmup, args.steps, args.seed)), flush=True)


if __name__ == "__main__":
    main()
