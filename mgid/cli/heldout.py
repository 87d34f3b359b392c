"""``mgid heldout``: score weights on the project's held-out sets beside the rainy input and two baselines."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mgid.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid heldout``'s parser to ``sub``."""
    p = sub.add_parser(
        "heldout", help="score weights on the project's held-out sets, beside the rainy input and two baselines",
        description="De-rain the embedded held-out paired sets (streaks: the training renderer at the original rain "
                    "density; perspective: a second renderer never trained on; heavy: heavy rain; varied: several "
                    "directions, long streaks, drizzle, near-camera streaks; layered: the benchmarks' kind of rain, "
                    "noise streak layers and a veil; and one per --photo-folders DIR) with each --weights file and "
                    "print mean Y-channel PSNR / SSIM (paper convention) and the brightness shift (mean Y of output "
                    "minus clean, grey levels) beside the rainy input, a 3x3 median filter and the temporal "
                    "median of 8 rainy frames of the same scene. Writes OUT/heldout.json and, with --picture, "
                    "OUT/heldout_compare.png.")
    common.add_weights_argument(p, "weights to score (several allowed)", several=True)
    p.add_argument("--names", nargs="+", metavar="NAME", help="a column name per --weights file")
    common.add_device_argument(p)
    common.add_precision_arguments(p)
    common.add_self_ensemble_argument(p)
    p.add_argument("--count", type=int, default=None, metavar="N", help="images per set [default: all, 24]")
    p.add_argument("--photo-folders", nargs="+", default=(), metavar="DIR",
                   help="also score a set per folder of clean photos, named after it: its held-out photos (the 10 "
                        "per folder that training with --embedded.photo_folders never sees) under the streaks rain")
    p.add_argument("--out", default="eval_heldout", metavar="DIR", help="output folder [default: eval_heldout]")
    p.add_argument("--no-baselines", action="store_true", help="skip the median and temporal-median baselines")
    p.add_argument("--picture", action="store_true", help="also write a comparison picture")
    p.add_argument("--picture-rows", type=int, default=2, metavar="N", help="images per set in the picture [2]")
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """Score each ``--weights`` on the held-out sets, print the table, write OUT/heldout.json; the exit code."""
    from mgid.data import write_image
    from mgid.derain.derainer import load_model, name_weights
    from mgid.eval.heldout import comparison_rows, evaluate_heldout, format_table, write_json
    from mgid.visualize import image_grid

    named = name_weights(args.weights, args.names)
    derainers = {n: load_model(w, args.device, self_ensemble=args.self_ensemble, **common.precision_kwargs(args))
                 for n, w in named.items()}
    first = next(iter(derainers.values()))
    print(f"{args.prog}: on {first.device}, {common.describe_arithmetic(first)}", file=sys.stderr)
    models = {n: d.derain for n, d in derainers.items()}
    table = evaluate_heldout(models, photo_folders=args.photo_folders, count=args.count,
                             baselines=not args.no_baselines)
    print(format_table(table))
    out = Path(args.out)
    path = write_json(table, out / "heldout.json", weights=named, self_ensemble=args.self_ensemble)
    print(f"scores: {path}")
    if args.picture:
        rows, headers = comparison_rows(models, per_set=args.picture_rows, photo_folders=args.photo_folders)
        print(f"comparison: {write_image(out / 'heldout_compare.png', image_grid(rows, headers=headers))} "
              f"({' | '.join(headers)}; {args.picture_rows} images of each held-out set)")
    return common.EXIT_OK
