"""Held-out gain of step checkpoints after BatchNorm recalibration, as the end of a run would leave them.

A run's step checkpoints carry BatchNorm running averages taken while the weights moved, so their held-out
scores jump from one checkpoint to the next (`tools/learning_curve.py` shows them so). This script re-estimates
the statistics of each checkpoint on ``--batches`` training batches of ``--config``'s embedded data (what
the trainer does after its last step, `mgid.train.bn_recalibration`) and then scores it on the held-out sets
(`mgid.eval.heldout`, fp32): the number to compare two runs by at equal steps.

    OMP_NUM_THREADS=1 python -m benchmarks.recalibrated_score --config long \\
        runs/long/checkpoints/step_000750.safetensors runs/long_control/checkpoints/step_000750.safetensors

Training data only: the held-out sets are scored, never used for the statistics.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmarks.harness import cpu_info, log
from mgid.config.train_config import resolve_config
from mgid.data.stream import StreamingTimeLapse
from mgid.derain.derainer import load_model
from mgid.eval.heldout import RAINY, evaluate_heldout
from mgid.train.bn_recalibration import recalibrate_batchnorm, recalibration_batches


def training_batches(config: str, batches: int) -> Iterator[torch.Tensor]:
    """``batches`` x 2 batches (frame 1, frame 2) of the recipe's streamed training pairs, (B, 3, S, S): the
    batches its trainer recalibrates with (`mgid.train.bn_recalibration.recalibration_batches`, one process)."""
    cfg = resolve_config(config)
    data = StreamingTimeLapse(config=cfg.embedded, crop_size=cfg.crop_size, seed=cfg.seed)
    return recalibration_batches(data, cfg.batch_size, batches)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.recalibrated_score", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="step checkpoints (NAME.safetensors + NAME.json)")
    p.add_argument("--config", default="cpu", help="recipe whose training data feeds the statistics [cpu]")
    p.add_argument("--batches", type=int, default=100, help="training batches for the statistics [100]")
    p.add_argument("--threads", type=int, default=1, help="torch threads [1]")
    p.add_argument("--json", type=Path, default=None, help="also write the gains here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    log(f"CPU: {cpu_info()['line']}; statistics from {args.batches} batches of recipe {args.config!r}")
    results = {}
    for path in args.checkpoints:
        derainer = load_model(path, "cpu", precision="fp32")
        recalibrate_batchnorm(derainer.net, training_batches(args.config, args.batches))
        table = evaluate_heldout({"model": derainer.derain}, baselines=False)
        results[str(path)] = {s: {"psnr": row["model"].psnr, "gain": row["model"].psnr - row[RAINY].psnr}
                              for s, row in table.items()}
        print(f"{path}: " + ", ".join(f"{s} {v['psnr']:.2f} dB ({v['gain']:+.2f})"
                                      for s, v in results[str(path)].items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "batches": args.batches, "cpu": cpu_info()["line"],
                                         "scores": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
