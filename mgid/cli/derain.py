"""``mgid derain``: de-rain images (a file, a folder or a glob) into a folder, or a video."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mgid.cli import common

if TYPE_CHECKING:
    from mgid.derain.derainer import BaseDerainer



def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid derain``'s parser to ``sub``."""
    from mgid.data.image_header import DEFAULT_MAX_PIXELS
    from mgid.data.video import VIDEO_SUFFIXES
    from mgid.derain.backend_choice import BACKENDS

    p = sub.add_parser(
        "derain", help="de-rain images (a file, a folder or a glob) into an output folder, or a video",
        description="De-rain INPUT (an image file, a folder searched recursively, or a quoted glob such as "
                    "'photos/**/*.jpg') into the folder OUTPUT (created). Each result keeps its input's path "
                    "relative to INPUT (or to the glob's folder part), its name (plus --suffix) and its format, "
                    "is turned upright by the EXIF orientation, and keeps the EXIF (orientation reset) and ICC "
                    "colour profile in JPEG, PNG and WebP. With a single "
                    "file INPUT, OUTPUT may also be a file name with the same suffix. --save-rain writes the "
                    "rain layer (what was removed, in pixel units) as <name>_rain.png beside each result; "
                    "--compare writes <name>_compare.png: input | de-rained | rain layer. Files that are not "
                    "images or cannot be read are skipped with a message, and the exit code is then 1. "
                    "Inputs are never overwritten; existing outputs only with --overwrite.")
    p.add_argument("input", metavar="INPUT", help="image file, folder or glob (quote it), or a video")
    p.add_argument("output", metavar="OUTPUT", help="output folder (created), or a video file")
    common.add_model_arguments(p)
    video = p.add_argument_group(
        "videos", "A video job when INPUT is a video file, OUTPUT names one, or --temporal-median is given: "
                  "frames are de-rained one by one (memory read only) and written with the input's size, frame "
                  "rate, frame count and audio; the container and codec come from OUTPUT's suffix ("
                  + ", ".join(VIDEO_SUFFIXES) + "; no suffix: a folder of PNG frames). A folder INPUT is then a "
                  "sequence of frames in name order. Read and written with PyAV (FFmpeg).")
    video.add_argument("--temporal-median", type=int, default=None, metavar="N",
                       help="instead of the network: the per-pixel median of a sliding window of N frames "
                            "(a classical baseline for a static camera)")
    video.add_argument("--batch-size", type=int, default=None, metavar="B",
                       help="frames per network call [default: 8 on a GPU, 1 on a CPU]")
    video.add_argument("--fps", type=float, default=None,
                       help="frame rate of a folder of frames [default: 25]")
    video.add_argument("--allow-truncated", action="store_true",
                       help="exit 0 when the input gives fewer frames than its header announces (a truncated "
                            "file; the frames read are written either way, with a warning)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="run the network in PyTorch, or an exported ONNX file (mgid export --tiling-inputs --onnx) "
                        "in onnxruntime on the CPU (then --weights names the .onnx file); auto: onnxruntime for an "
                        ".onnx file, or where it measured faster than PyTorch on this kind of CPU in fp32 "
                        "(mgid/derain/backend_speed.json), else PyTorch [default: auto]")
    common.add_max_megapixels_argument(p, DEFAULT_MAX_PIXELS / 1e6, "skip images larger than this", zero_unlimited=True)
    p.add_argument("--suffix", default=None, metavar="SUFFIX",
                   help="name each result <input stem>SUFFIX<extension>, e.g. --suffix _derained writes "
                        "photo_derained.jpg (OUTPUT may then be INPUT's folder; earlier results there are not "
                        "de-rained again) [default: none: the input's name]")
    p.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help="quality of JPEG results, 1 to 100 (WebP results are lossless) [default: 95]")
    p.add_argument("--save-rain", action="store_true", help="also write the rain layer as <name>_rain.png")
    p.add_argument("--compare", action="store_true",
                   help="also write <name>_compare.png: input | de-rained | rain layer side by side")
    common.add_overwrite_argument(p, "existing outputs (never inputs)")
    common.add_quiet_argument(p)
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """De-rain the images (or the video) ``args`` name; the exit code (`EXIT_SKIPPED` when files were skipped).

    Raises:
        MgidError: Bad options, input or weights (`mgid.cli.common.run_command` reports it).
    """
    from mgid.data.imageio import JPEG_QUALITY
    from mgid.derain.files import derain_files, plan_derain
    from mgid.derain.video import is_video_job

    max_pixels = common.check_max_megapixels(args)
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        raise common.UsageError(f"--jpeg-quality must be from 1 to 100, got {args.jpeg_quality}")
    if is_video_job(args.input, args.output, args.temporal_median):
        return run_video(args)
    plan = plan_derain(args.input, args.output, args.save_rain, args.compare, args.overwrite, suffix=args.suffix or "")
    if plan.ignored:
        print(f"{args.prog}: ignoring {plan.ignored} file(s) under the OUTPUT folder {plan.output_folder}",
              file=sys.stderr)
    derainer, runtime = load_derainer(args)
    print(f"{args.prog}: on {derainer.device}, {runtime}, {common.describe_arithmetic(derainer)}; "
          f"{derainer.describe_tiling()}", file=sys.stderr)
    report = derain_files(derainer, plan.jobs, progress=not args.quiet, on_skip=_print_skip, on_retry=_print_retry,
                          max_pixels=max_pixels, jpeg_quality=args.jpeg_quality or JPEG_QUALITY)
    for path, note in report.notes:
        print(f"{args.prog}: note: {path}: {note}", file=sys.stderr)
    print(f"de-rained {report.done} image(s) into {plan.output_folder} on {derainer.device}, "
          f"{common.describe_arithmetic(derainer)}" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    if report.skipped:
        print(f"{args.prog}: {len(report.skipped)} file(s) skipped: " + ", ".join(str(p) for p, _ in report.skipped),
              file=sys.stderr)
        return common.EXIT_SKIPPED
    return common.EXIT_OK


def run_video(args: argparse.Namespace) -> int:
    """De-rain a video (file or folder of frames) frame by frame with the network, or take its temporal median."""
    from mgid.derain.tiling import TILE_AUTO
    from mgid.derain.video import derain_video, median_video

    if args.save_rain or args.compare:
        raise common.UsageError("--save-rain/--compare apply to images; a video is written de-rained only")
    if args.suffix is not None or args.jpeg_quality is not None:
        raise common.UsageError("--suffix/--jpeg-quality apply to images; a video is named by OUTPUT")
    if args.temporal_median is not None:
        if args.weights is not None or args.tile != TILE_AUTO or args.self_ensemble:
            raise common.UsageError("--temporal-median uses no network; drop --weights/--tile/--self-ensemble")
        report = median_video(args.input, args.output, args.temporal_median, fps=args.fps, overwrite=args.overwrite,
                              progress=not args.quiet)
        how = f"temporal median of {args.temporal_median} frames"
    else:
        derainer, runtime = load_derainer(args)
        report = derain_video(derainer, args.input, args.output, batch_size=args.batch_size, fps=args.fps,
                              overwrite=args.overwrite, progress=not args.quiet)
        how = f"on {derainer.device}, {runtime}, {common.describe_arithmetic(derainer)}"
    print(f"wrote {report.frames} frames to {report.output} ({report.fps:.2f} frames/s, {how}"
          + (", audio kept" if report.audio else "") + ")")
    truncation = report.truncation()
    if truncation is not None:
        print(f"{args.prog}: warning: {truncation}"
              + ("" if args.allow_truncated else f" (exit code {common.EXIT_SKIPPED}; --allow-truncated accepts it)"),
              file=sys.stderr)
        return common.EXIT_OK if args.allow_truncated else common.EXIT_SKIPPED
    return common.EXIT_OK


def load_derainer(args: argparse.Namespace) -> tuple[BaseDerainer, str]:
    """The derainer of the options and a phrase naming its runtime and why: `mgid.load_model`, or an ONNX file in
    onnxruntime (`mgid.derain.backend_choice.choose_backend` decides ``--backend auto``).

    Raises:
        common.UsageError: ``--backend onnxruntime`` without an ``.onnx`` file.
    """
    from mgid.derain.backend_choice import cached_onnx_export, choose_backend

    choice = choose_backend(args.backend, args.weights, args.device, args.precision)
    runtime = f"backend {choice.backend} ({'auto: ' if args.backend == 'auto' else ''}{choice.reason})"
    if choice.backend == "onnxruntime":
        from mgid.derain.onnx_backend import load_onnx_derainer

        weights = args.weights
        if weights is None or Path(weights).suffix.lower() != ".onnx":
            if args.backend == "onnxruntime":
                raise common.UsageError("--backend onnxruntime needs --weights FILE.onnx (write one with mgid export "
                                        "--tiling-inputs --onnx FILE.onnx)")
            weights = cached_onnx_export(weights)  # auto chose onnxruntime for PyTorch weights
        return load_onnx_derainer(weights, tile=args.tile, overlap=args.tile_overlap, device=args.device,
                                  self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                                  **common.precision_kwargs(args)), runtime
    from mgid.derain.derainer import load_model

    return load_model(args.weights, args.device, tile=args.tile, overlap=args.tile_overlap,
                      self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                      **common.precision_kwargs(args)), runtime


def _print_skip(path: Path, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)


def _print_retry(path: Path, line: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"{path}: {line}", file=sys.stderr)
