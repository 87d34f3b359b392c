"""``mgid evaluate``: PSNR/SSIM of de-rained images against clean ones, the way de-raining papers report them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mgid.cli import common

if TYPE_CHECKING:
    from mgid.eval.scoring import EvaluationReport


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid evaluate``'s parser to ``sub``."""
    from mgid.data.image_header import DEFAULT_MAX_PIXELS

    p = sub.add_parser(
        "evaluate", help="PSNR/SSIM of de-rained images against clean ones (paper convention)",
        description="Score de-rained images against clean ones: PSNR and SSIM on the Y channel of BT.601 YCbCr "
                    "(as MATLAB's rgb2ycbcr, uint8, peak 255; SSIM with an 11x11 Gaussian window, sigma 1.5), "
                    "the convention de-raining papers report; --rgb scores RGB instead. Either --pred DIR --gt DIR "
                    "(files paired by name: same stem, or rain-N / norain-N / N), or --data DIR, a paired set "
                    "(rain/ + norain/ as Rain100L/H, or input/ + target/) whose rainy images are de-rained first "
                    "(--weights, default the shipped weights); the rainy inputs are scored too. Writes "
                    "metrics.csv (per image) and metrics.json (summary) to --out (never over existing ones "
                    "without --overwrite) after printing the summary. Files without a partner are listed and make "
                    "the exit code 1 (unless --allow-missing); unreadable pairs are skipped (exit code 1).")
    p.add_argument("--pred", metavar="DIR", help="de-rained images")
    p.add_argument("--gt", metavar="DIR", help="clean (ground truth) images")
    p.add_argument("--data", metavar="DIR", help="paired set to de-rain and score (rain/+norain/ or input/+target/)")
    p.add_argument("--rgb", action="store_true", help="score the RGB channels instead of Y")
    p.add_argument("--out", metavar="DIR",
                   help="where metrics.csv / metrics.json (and, with --data, derained/) go [default: the --pred "
                        "folder; with --data ./eval_<data folder name>]")
    common.add_overwrite_argument(p, "existing metrics.csv / metrics.json (and, with --data, de-rained images)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when some files have no partner (they are still listed and not scored)")
    common.add_model_arguments(p)
    common.add_max_megapixels_argument(p, DEFAULT_MAX_PIXELS / 1e6, "skip pairs with an image larger than this",
                                       zero_unlimited=True)
    common.add_quiet_argument(p)
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """Score ``--pred`` against ``--gt``, or de-rain and score ``--data``; print and write the scores.

    Returns:
        `EXIT_OK`; `EXIT_SKIPPED` when pairs were skipped or files had no partner (without ``--allow-missing``).

    Raises:
        common.UsageError: Options that do not go together, or no pair could be scored.
        common.WriteError: A de-rained image or the scores could not be written.
    """
    max_pixels = common.check_max_megapixels(args)
    score = _score_derained_set if args.data is not None else _score_predictions
    report, out = score(args, max_pixels)
    if not report.scores:  # one line, no summary of nothing
        raise common.UsageError(f"no pair could be scored between {report.predictions} and {report.targets}: "
                                f"{report.unscored()}")
    print(report.describe())  # before writing: a failed write loses no scores
    try:
        csv_path, json_path = report.write(out)
    except OSError as exc:
        raise common.WriteError(f"could not write the scores to {out} ({common.os_error_text(exc)}); they are printed "
                                "above") from exc
    print(f"per-image scores: {csv_path}; summary: {json_path}"
          + (f"; de-rained images: {out / 'derained'}" if args.data is not None else ""))
    if report.unmatched and not args.allow_missing:
        print(f"{args.prog}: {report.unmatched} file(s) without a partner were not scored (listed above): exit code "
              f"{common.EXIT_SKIPPED}; pass --allow-missing to accept a partial set", file=sys.stderr)
        return common.EXIT_SKIPPED
    return common.EXIT_SKIPPED if report.skipped else common.EXIT_OK


def _score_derained_set(args: argparse.Namespace, max_pixels: int | None) -> tuple[EvaluationReport, Path]:
    """``--data``: de-rain the paired set's rainy images into OUT/derained and score them (and the inputs); the
    report and OUT (``--out``, default ``./eval_<data folder name>``)."""
    from mgid.derain.derainer import load_model
    from mgid.eval.scoring import check_report_paths, evaluate_model, paired_folders

    if args.pred is not None or args.gt is not None:
        raise common.UsageError("give either --data DIR (de-rain and score a paired set) or --pred DIR --gt DIR "
                                "(score existing predictions), not both")
    out = Path(args.out) if args.out else Path(f"eval_{Path(args.data).resolve().name}")
    paired_folders(args.data)  # a wrong folder is reported before the weights are loaded
    check_report_paths(out, args.overwrite, save_dir=out / "derained")  # ... and a wrong --out too
    derainer = load_model(args.weights, args.device, tile=args.tile, overlap=args.tile_overlap,
                          self_ensemble=args.self_ensemble, max_memory=args.max_memory, **common.precision_kwargs(args))
    print(f"{args.prog}: on {derainer.device}, {common.describe_arithmetic(derainer)}; {derainer.describe_tiling()}",
          file=sys.stderr)
    try:
        return evaluate_model(derainer, args.data, _channel(args), save_dir=out / "derained",
                              progress=not args.quiet, max_pixels=max_pixels), out
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise common.WriteError(f"could not write under {out}: {common.os_error_text(exc)}") from exc


def _score_predictions(args: argparse.Namespace, max_pixels: int | None) -> tuple[EvaluationReport, Path]:
    """``--pred DIR --gt DIR``: score existing de-rained images against clean ones; the report and OUT (``--out``,
    default the ``--pred`` folder)."""
    from mgid.derain.tiling import TILE_AUTO
    from mgid.eval.scoring import check_report_paths, evaluate_folders

    if args.pred is None or args.gt is None:
        raise common.UsageError("give --pred DIR --gt DIR (score predictions against clean images), or --data DIR "
                                "(a paired set with rain/ + norain/ or input/ + target/, de-rained with --weights or "
                                "the shipped weights)")
    if args.weights is not None or args.tile != TILE_AUTO or args.self_ensemble or args.max_memory is not None:
        raise common.UsageError("--weights/--tile/--max-memory/--self-ensemble apply to --data only (with --pred the "
                                "images are already de-rained)")
    out = Path(args.out or args.pred)
    check_report_paths(out, args.overwrite)
    return evaluate_folders(args.pred, args.gt, _channel(args), progress=not args.quiet, max_pixels=max_pixels), out


def _channel(args: argparse.Namespace) -> str:
    return "rgb" if args.rgb else "y"
