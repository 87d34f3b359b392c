"""The ``mgid`` command line: ``mgid train``, ``mgid finetune``, ``mgid data synth``, ``mgid derain``,
``mgid export``, ``mgid evaluate``, ``mgid heldout``, ``mgid web``, ``mgid bench``, ``mgid info``.

Over 400 lines because it is the one place that parses arguments, for ten commands that share their
model, device, precision and tiling options; each command's library lives elsewhere.

Each command is a ``register(subparsers)`` function in `COMMANDS` (by name) that adds its parser and sets
``func`` (called with the parsed arguments, returns the exit code); a new command (derain,
evaluate, bench, ...) is one more entry there; ``mgid NAME`` registers only that command's parser. The commands only parse arguments, call
the library (`mgid.derain.files` and `mgid.derain.video` for derain, `mgid.train.finetune`, `mgid.derain.onnx_export`,
`mgid.derain.web`, `mgid.eval.scoring`, `mgid.eval.heldout`, `mgid.data`, `mgid.train`) and print its results and exit codes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from mgid import __version__


def _train(args: argparse.Namespace) -> int:
    from mgid.train.cli import run_from_args

    return run_from_args(args, "mgid train")


def register_train(sub: argparse._SubParsersAction) -> None:
    from mgid.train.cli import add_train_arguments

    p = sub.add_parser("train", help="train MGID (same options as train.py)",
                       description="Train MGID on time-lapse pairs (default: the embedded synthetic set). Settings: "
                                   "defaults (the paper) < --config NAME|FILE.yaml < the options below.")
    add_train_arguments(p)
    p.set_defaults(func=_train)


def _finetune(args: argparse.Namespace) -> int:
    from mgid.data.video import VideoError
    from mgid.train.cli import run_from_args
    from mgid.train.finetune import ClipOptions, finetune_config

    clips = ClipOptions(args.video, args.weights, args.frames_per_clip, args.max_shift, args.fps)
    return run_from_args(args, "mgid finetune", prepare=lambda cfg: finetune_config(cfg, clips,
                                                                                  extract=not args.print_config),
                         errors=(VideoError,))


def register_finetune(sub: argparse._SubParsersAction) -> None:
    from mgid.train.cli import add_train_arguments
    from mgid.train.finetune import FINETUNE_RECIPE, ClipOptions

    defaults = ClipOptions(videos=())
    p = sub.add_parser(
        "finetune", help="fine-tune the weights on your own static camera's rainy clips (no clean frames needed)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Fine-tune MGID on footage of one fixed camera: each clip (a video file or a folder of frames) "
                    "is a time-lapse scene;\nframes sampled evenly over it are checked to be of a static camera "
                    "(phase correlation) and written to OUT/frames/,\nthen pairs of two frames, random crops and the "
                    "MGID objective train the network from --weights.\nThe result is OUT/checkpoints/"
                    "last.safetensors (for mgid derain --weights). Settings: the defaults < --config\n"
                    f"(default: the recipe {FINETUNE_RECIPE!r}) < the options below; --resume continues a run.",
        epilog="example:\n  mgid finetune --video cam1.mp4 cam1_later.mp4 --out runs/cam1 --max-steps 600\n"
               "  mgid derain rainy.mp4 clean.mp4 --weights runs/cam1/checkpoints/last.safetensors")
    p.add_argument("--video", nargs="+", required=True, metavar="CLIP",
                   help="static-camera clips: video files or folders of frames")
    p.add_argument("--weights", metavar="FILE.safetensors",
                   help="the weights to start from [default: the shipped weights]")
    p.add_argument("--frames-per-clip", type=int, default=defaults.frames_per_clip, metavar="N",
                   help="frames sampled evenly over each clip [default: %(default)s]")
    p.add_argument("--max-shift", type=float, default=defaults.max_shift, metavar="PX",
                   help="largest camera shift against the first sampled frame, in pixels, still taken as a static "
                        "camera [default: %(default)s]")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (for messages)")
    add_train_arguments(p)
    p.set_defaults(func=_finetune, config=FINETUNE_RECIPE)


def _data_synth(args: argparse.Namespace) -> int:
    from mgid.config.fields import ConfigError, build_dataclass, merge, overrides_from_args
    from mgid.config.train_config import resolve_config
    from mgid.data import EmbeddedDataConfig, write_synthetic_dataset

    try:
        base = resolve_config(args.config).embedded if args.config else EmbeddedDataConfig()
        cfg = build_dataclass(EmbeddedDataConfig, merge(asdict(base), overrides_from_args(args)))
        summary = write_synthetic_dataset(args.out, config=cfg, seed=args.seed, overwrite=args.overwrite,
                                          layout=args.layout)
    except (ConfigError, FileExistsError, ValueError) as exc:
        print(f"mgid data synth: error: {exc}", file=sys.stderr)
        return 2
    stored = ("as side-by-side pairs" if summary["layout"] == "mgid" else "in scene folders")
    print(f"wrote {summary['files']} images to {summary['root']}: {summary['train_scenes']} training scenes, "
          f"{summary['val_scenes']} validation scenes ({summary['frames_per_scene']} frames of "
          f"{summary['size']}x{summary['size']} each, {stored}), {summary['paired']} paired test images (paired/rain, "
          f"paired/norain)\ntrain on it: mgid train --data {summary['root']} --val_data {summary['root']}/paired")
    return 0


def register_data(sub: argparse._SubParsersAction) -> None:
    from mgid.config.train_config import NAMED_CONFIGS, add_config_arguments
    from mgid.data import EmbeddedDataConfig
    from mgid.data.synthetic_export import EXPORT_LAYOUTS

    p = sub.add_parser("data", help="data sets: write the synthetic time-lapse set to disk",
                       description="Data set tools.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = data_sub.add_parser(
        "synth", help="write the embedded synthetic data set (scene folders + paired test set) to a folder",
        description="Write the embedded synthetic time-lapse set: OUT/train/<scene>/<frame>.png, "
                    "OUT/val/<scene>/<frame>.png (or, with --layout mgid, the official side-by-side pair images) "
                    "and OUT/paired/{rain,norain}/ (Rain100L naming). Scenes are cut from the bundled photos and, "
                    "with --photo_folders, from your folders of clean photos (their held-out photos go "
                    "to val/). "
                    "Settings: EmbeddedDataConfig defaults < --config's embedded section < the options below.")
    synth.add_argument("--out", required=True, metavar="DIR", help="folder to write (must not hold a data set)")
    synth.add_argument("--seed", type=int, default=0, help="fixes scenes and rain [default: 0]")
    synth.add_argument("--config", metavar="NAME|FILE.yaml",
                       help=f"take the embedded data settings of a training config ({', '.join(NAMED_CONFIGS)} "
                            f"or a YAML file)")
    synth.add_argument("--overwrite", action="store_true", help="write into an OUT that already has a data set")
    synth.add_argument("--layout", choices=EXPORT_LAYOUTS, default="scenes",
                       help="scenes: OUT/<split>/<scene>/<frame>.png; mgid: the official side-by-side pair images, "
                            "OUT/<split>/<scene>-<k>.png holding frames 2k and 2k+1 [default: scenes]")
    add_config_arguments(synth, EmbeddedDataConfig)
    synth.set_defaults(func=_data_synth)


# --------------------------------------------------------------------------------------------------
# mgid derain

#: Exit codes of derain / evaluate: done; done but some files were skipped; nothing done (bad arguments).
EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2


def _err(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _print_skip(path: Path, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)


def _print_retry(path: Path, line: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"{path}: {line}", file=sys.stderr)


def _derain_command(args: argparse.Namespace) -> int:
    from mgid.checkpoint import CheckpointError
    from mgid.data.imageio import JPEG_QUALITY
    from mgid.derain.files import PlanError, derain_files, plan_derain
    from mgid.derain.video import is_video_job

    prog = "mgid derain"
    if args.max_megapixels < 0:
        return _err(prog, f"--max-megapixels must be >= 0 (0 = no limit), got {args.max_megapixels:g}")
    if args.jpeg_quality is not None and not 1 <= args.jpeg_quality <= 100:
        return _err(prog, f"--jpeg-quality must be from 1 to 100, got {args.jpeg_quality}")
    if is_video_job(args.input, args.output, args.temporal_median):
        return _derain_video_command(args, prog)
    try:
        plan = plan_derain(args.input, args.output, args.save_rain, args.compare, args.overwrite,
                           suffix=args.suffix or "")
    except (FileNotFoundError, PlanError) as exc:
        return _err(prog, str(exc))
    if plan.ignored:
        print(f"{prog}: ignoring {plan.ignored} file(s) under the OUTPUT folder {plan.output_folder}",
              file=sys.stderr)
    try:
        derainer, runtime = _load_derainer(args)
    except (FileNotFoundError, CheckpointError, ModuleNotFoundError, RuntimeError, ValueError) as exc:
        return _err(prog, str(exc))
    print(f"{prog}: on {derainer.device}, {runtime}, {_arithmetic(derainer)}; {derainer.describe_tiling()}",
          file=sys.stderr)
    try:
        report = derain_files(derainer, plan.jobs, progress=not args.quiet, on_skip=_print_skip, on_retry=_print_retry,
                              max_pixels=_max_pixels(args), jpeg_quality=args.jpeg_quality or JPEG_QUALITY)
    except RuntimeError as exc:  # not one file's problem (those are skipped): e.g. the weights give NaN
        return _err(prog, str(exc))
    for path, note in report.notes:
        print(f"{prog}: note: {path}: {note}", file=sys.stderr)
    print(f"de-rained {report.done} image(s) into {plan.output_folder} on {derainer.device}, "
          f"{_arithmetic(derainer)}" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    if report.skipped:
        print(f"{prog}: {len(report.skipped)} file(s) skipped: " + ", ".join(str(p) for p, _ in report.skipped),
              file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_OK


def _load_derainer(args: argparse.Namespace):
    """(the derainer of ``mgid derain``'s options, a phrase naming its runtime and why): `mgid.load_model`, or an
    ONNX file in onnxruntime (`mgid.derain.backend_choice.choose_backend` decides ``--backend auto``)."""
    from mgid.derain.backend_choice import cached_onnx_export, choose_backend

    choice = choose_backend(args.backend, args.weights, args.device, args.precision)
    runtime = f"backend {choice.backend} ({'auto: ' if args.backend == 'auto' else ''}{choice.reason})"
    if choice.backend == "onnxruntime":
        from mgid.derain.onnx_backend import load_onnx_derainer

        weights = args.weights
        if weights is None or Path(weights).suffix.lower() != ".onnx":
            if args.backend == "onnxruntime":
                raise ValueError("--backend onnxruntime needs --weights FILE.onnx (write one with mgid export "
                                 "--tiling-inputs --onnx FILE.onnx)")
            weights = cached_onnx_export(weights)  # auto chose onnxruntime for PyTorch weights
        return load_onnx_derainer(weights, tile=args.tile, overlap=args.tile_overlap, device=args.device,
                                  self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                                  **_precision_kwargs(args)), runtime
    from mgid.derain.derainer import load_model

    return load_model(args.weights, args.device, tile=args.tile, overlap=args.tile_overlap,
                      self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                      **_precision_kwargs(args)), runtime


def _derain_video_command(args: argparse.Namespace, prog: str) -> int:
    """``mgid derain`` of a video (file or folder of frames): the network frame by frame, or --temporal-median."""
    from mgid.checkpoint import CheckpointError
    from mgid.data.video import VideoError
    from mgid.derain.tiling import TILE_AUTO
    from mgid.derain.video import derain_video, median_video

    if args.save_rain or args.compare:
        return _err(prog, "--save-rain/--compare apply to images; a video is written de-rained only")
    if args.suffix is not None or args.jpeg_quality is not None:
        return _err(prog, "--suffix/--jpeg-quality apply to images; a video is named by OUTPUT")
    try:
        if args.temporal_median is not None:
            if args.weights is not None or args.tile != TILE_AUTO or args.self_ensemble:
                return _err(prog, "--temporal-median uses no network; drop --weights/--tile/--self-ensemble")
            report = median_video(args.input, args.output, args.temporal_median, fps=args.fps,
                                  overwrite=args.overwrite, progress=not args.quiet)
            how = f"temporal median of {args.temporal_median} frames"
        else:
            derainer, runtime = _load_derainer(args)
            report = derain_video(derainer, args.input, args.output, batch_size=args.batch_size, fps=args.fps,
                                  overwrite=args.overwrite, progress=not args.quiet)
            how = f"on {derainer.device}, {runtime}, {_arithmetic(derainer)}"
    except (VideoError, FileNotFoundError, CheckpointError, ModuleNotFoundError, RuntimeError, ValueError) as exc:
        return _err(prog, str(exc))
    print(f"wrote {report.frames} frames to {report.output} ({report.fps:.2f} frames/s, {how}"
          + (", audio kept" if report.audio else "") + ")")
    truncation = report.truncation()
    if truncation is not None:
        print(f"{prog}: warning: {truncation}"
              + ("" if args.allow_truncated else f" (exit code {EXIT_SKIPPED}; --allow-truncated accepts it)"),
              file=sys.stderr)
        return EXIT_OK if args.allow_truncated else EXIT_SKIPPED
    return EXIT_OK


def _add_device_argument(p: argparse.ArgumentParser) -> None:
    from mgid.config.train_config import DEVICES  # the values training's --device takes; mgid.devices resolves them

    p.add_argument("--device", default="auto", choices=list(DEVICES),
                   help="where to run [default: auto = cuda when available]")


def _add_precision_arguments(p: argparse.ArgumentParser) -> None:
    from mgid.precision import CHANNELS_LAST_SETTINGS, PRECISIONS

    p.add_argument("--precision", default="auto", choices=list(PRECISIONS["inference"]),
                   help="arithmetic of the network (frozen for inference: BatchNorm folded into the convolutions): "
                        "fp32, or bf16 = bfloat16 weights and activations (the norm, memory read and output in fp32); "
                        "auto = bf16 on a CPU whose native bf16 instructions (AVX512-BF16 or AMX) torch can "
                        "use, fp32 elsewhere (GPUs included); the command prints what auto chose and why. "
                        "Measured on both CPU kinds by benchmarks/bench_derain.py (docs/DERAIN.md) [default: auto]")
    p.add_argument("--channels-last", default="auto", choices=list(CHANNELS_LAST_SETTINGS),
                   help="channels_last memory format for the network and its inputs; auto = on on a CPU, except "
                        "fp32 without AVX512, which runs NCHW on NNPACK's Winograd convolutions; off elsewhere "
                        "[default: auto]")


def _precision_kwargs(args: argparse.Namespace) -> dict:
    """`mgid.load_model` keyword arguments of --precision / --channels-last."""
    from mgid.precision import CHANNELS_LAST_SETTINGS

    return {"precision": args.precision, "channels_last": CHANNELS_LAST_SETTINGS[args.channels_last]}


def _arithmetic(derainer) -> str:
    """How a `Derainer` computes and why, for messages: "fp32 (auto precision ...: CPU ... has no native bf16 ...)",
    and whether it averages the 8 flips/turns."""
    return derainer.arithmetic.describe() + (", self-ensemble of 8 flips/turns" if derainer.self_ensemble else "")


def _add_self_ensemble_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the rain layer over the 8 flips and quarter turns of each image (geometric "
                        "self-ensemble): 8x the time; with the shipped weights it lowers the scores (quarter "
                        "turns make rain horizontal; measured in the README) [default: off]")


def _tile_argument(text: str) -> int | str | None:
    """``--tile``: ``auto``, ``none`` (whole images) or a size in pixels."""
    from mgid.derain.tiling import TILE_AUTO

    if text.lower() in (TILE_AUTO, "none"):
        return TILE_AUTO if text.lower() == TILE_AUTO else None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a tile size in pixels, got {text!r}") from None


def _bytes_argument(text: str) -> int:
    """``--max-memory``: a size such as 4G (`mgid.derain.memory_budget.parse_bytes`)."""
    from mgid.derain.memory_budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    from mgid.derain.memory_budget import PLANNED_SHARE
    from mgid.derain.tiling import DEFAULT_OVERLAP, TILE_AUTO

    p.add_argument("--weights", metavar="PATH",
                   help="weights to use: NAME.safetensors with NAME.json beside it, a `mgid train` output folder, "
                        "or a folder holding config.json + model.safetensors (mgid.save_pretrained, a Hugging Face "
                        "Hub download) [default: the shipped weights mgid/weights/mgid_embedded.safetensors]")
    _add_device_argument(p)
    _add_precision_arguments(p)
    p.add_argument("--tile", type=_tile_argument, default=TILE_AUTO, metavar="auto|none|SIZE",
                   help="auto: the whole image when it fits the memory budget (--max-memory), else the largest "
                        "tiles that do, from the measured bytes per pixel of the network (the source is printed); "
                        "none: whole images; SIZE: SIZE x SIZE tiles (a multiple of 8, e.g. 512). Tiles share "
                        "the whole image's normalisation statistics [default: auto]")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP, metavar="PX",
                   help="overlap of neighbouring tiles, blended smoothly (rounded up to a multiple of 8) "
                        "[default: %(default)s]")
    p.add_argument("--max-memory", type=_bytes_argument, default=None, metavar="SIZE",
                   help="memory the de-raining of one image may take, e.g. 4G or 512M (--tile auto tiles to stay "
                        "under it; the limit that applies to the process caps it: available memory, cgroup, ulimit -v) "
                        f"[default: {PLANNED_SHARE * 100:.0f}%% of what that limit leaves when each image "
                        f"starts]")
    _add_self_ensemble_argument(p)


def _max_pixels(args: argparse.Namespace) -> int | None:
    """``--max-megapixels`` as a pixel count (None: no limit)."""
    return int(args.max_megapixels * 1e6) if args.max_megapixels > 0 else None


def register_derain(sub: argparse._SubParsersAction) -> None:
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
    _add_model_arguments(p)
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
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6, metavar="MP",
                   help="skip images larger than this, judged from the file's header before anything is decoded "
                        "(a few-kilobyte PNG can claim 400 megapixels); 0 = no limit [default: %(default)g]")
    p.add_argument("--suffix", default=None, metavar="SUFFIX",
                   help="name each result <input stem>SUFFIX<extension>, e.g. --suffix _derained writes "
                        "photo_derained.jpg (OUTPUT may then be INPUT's folder; earlier results there are not "
                        "de-rained again) [default: none: the input's name]")
    p.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help="quality of JPEG results, 1 to 100 (WebP results are lossless) [default: 95]")
    p.add_argument("--save-rain", action="store_true", help="also write the rain layer as <name>_rain.png")
    p.add_argument("--compare", action="store_true",
                   help="also write <name>_compare.png: input | de-rained | rain layer side by side")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_derain_command)


# --------------------------------------------------------------------------------------------------
# mgid export


def _export_command(args: argparse.Namespace) -> int:
    from mgid.checkpoint import CheckpointError
    from mgid.derain.onnx_export import export_onnx

    prog = "mgid export"
    try:
        result = export_onnx(args.weights, args.onnx, args.opset, overwrite=args.overwrite,
                             tiling_inputs=args.tiling_inputs)
    except (FileNotFoundError, CheckpointError, ModuleNotFoundError, RuntimeError, ValueError) as exc:
        return _err(prog, str(exc))
    except OSError as exc:  # the write itself failed (disk full, the folder went away): nothing was written
        return _err(prog, f"could not write {args.onnx}: {exc.strerror or exc}")
    print(result.describe())
    return EXIT_OK


def register_export(sub: argparse._SubParsersAction) -> None:
    """``mgid export --onnx OUT.onnx [--weights W] [--opset N]``."""
    p = sub.add_parser(
        "export", help="export the network to ONNX: an image filter any ONNX runtime runs as it is",
        description="Export the inference network (memory read only, trained items baked in) to an ONNX file "
                    "that stock onnxruntime runs with no mgid code. By default an image filter: input image "
                    "(N,3,H,W) float32 RGB in [0,1] (8-bit pixels / 255), any N, any H and W >= 8; output "
                    "derained (N,3,H,W) in [0,1]; the padding to multiples of 8 is inside the graph. With "
                    "--tiling-inputs, the graph `mgid derain --backend onnxruntime --weights OUT.onnx` tiles large "
                    "photos with (image in [-1,1] with H, W multiples of 8, the instance-norm statistics as "
                    "inputs, the rain layer and the pre-norm query as outputs; mgid.derain.onnx_export documents it).")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx",
                   help="the ONNX file to write (checked before the export starts; written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT.onnx")
    p.add_argument("--tiling-inputs", action="store_true",
                   help="write the tiling graph of mgid derain --backend onnxruntime (statistics inputs, rain layer "
                        "output) instead of the image filter")
    p.add_argument("--weights", default=None, metavar="W",
                   help="checkpoint to export: NAME.safetensors (+ NAME.json) or a training folder "
                        "(default: the shipped weights)")
    from mgid.derain.onnx_export import OPSET_RANGES

    (dynamo_lo, dynamo_hi), script_lo = OPSET_RANGES["dynamo"], OPSET_RANGES["torchscript"][0]
    p.add_argument("--opset", type=int, default=None, metavar="N",
                   help=f"ai.onnx opset: {dynamo_lo} to {dynamo_hi} (the dynamo exporter), or {script_lo} to "
                        f"{dynamo_lo - 1} (written by the TorchScript exporter); any other is refused before the "
                        f"export [default: the dynamo exporter's own]")
    p.set_defaults(func=_export_command)


# --------------------------------------------------------------------------------------------------
# mgid web


def _web_command(args: argparse.Namespace) -> int:
    from mgid.checkpoint import CheckpointError
    from mgid.derain.web import is_loopback, serve

    prog = "mgid web"
    if not is_loopback(args.host):
        print(f"{prog}: warning: --host {args.host} makes the page reachable from other machines, and it has no "
              f"authentication: anyone who can reach port {args.port} can use this computer's CPU/GPU",
              file=sys.stderr)
    if args.max_upload_mb <= 0:
        return _err(prog, f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.max_megapixels <= 0 or args.job_seconds <= 0 or args.queue < 0:
        return _err(prog, "--max-megapixels and --job-seconds must be positive and --queue >= 0, got "
                          f"{args.max_megapixels:g}, {args.job_seconds:g} and {args.queue}")
    if not (args.read_timeout > 0 and args.upload_timeout > 0):
        return _err(prog, f"--read-timeout and --upload-timeout must be positive seconds, got {args.read_timeout:g} "
                          f"and {args.upload_timeout:g}")
    try:
        serve(args.host, args.port, args.weights, args.device, args.max_upload_mb, args.precision,
              max_pixels=int(args.max_megapixels * 1e6), job_seconds=args.job_seconds, max_waiting=args.queue,
              max_memory=args.max_memory, read_timeout=args.read_timeout, upload_timeout=args.upload_timeout)
    except ImportError as exc:  # Flask missing
        return _err(prog, f"{exc} (install it: pip install flask)")
    except (FileNotFoundError, CheckpointError, ValueError, RuntimeError) as exc:
        return _err(prog, str(exc))
    except OSError as exc:  # port in use, address not available
        return _err(prog, f"cannot listen on {args.host}:{args.port}: {exc}")
    return EXIT_OK


def register_web(sub: argparse._SubParsersAction) -> None:
    """``mgid web``: serve the try-it page (`mgid.derain.web`)."""
    from mgid.derain.memory_budget import PLANNED_SHARE
    from mgid.derain.web import (
        DEFAULT_HOST,
        DEFAULT_JOB_SECONDS,
        DEFAULT_MAX_PIXELS,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_MAX_WAITING,
        DEFAULT_PORT,
        DEFAULT_READ_TIMEOUT,
        DEFAULT_UPLOAD_TIMEOUT,
    )
    from mgid.precision import PRECISIONS

    p = sub.add_parser(
        "web", help="a web page to try the model in a browser (http://127.0.0.1:7860)",
        description="Serve a page where you upload a photo and see it rainy | de-rained | rain layer, with a "
                    "before/after slider and a download of the de-rained PNG. Uploads are processed in "
                    "memory and never written to disk. Limits: upload size, pixels (from the image's header, "
                    "before decoding), memory (automatic tiling), one photo at a time with a bounded queue "
                    "(503 + Retry-After beyond it) and a time limit per photo; an upload takes a place in the "
                    "queue only once it has arrived whole, and connections that stall are closed (--read-timeout, "
                    "--upload-timeout). Listens on this machine only "
                    "unless --host says otherwise (there is no authentication). Needs Flask (pip install flask).")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on [default: %(default)s]")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind; 0.0.0.0 exposes the page to the network [default: %(default)s]")
    p.add_argument("--weights", metavar="FILE.safetensors",
                   help="checkpoint to use (NAME.safetensors with NAME.json beside it, or a `mgid train` output "
                        "folder) [default: the shipped weights]")
    _add_device_argument(p)
    p.add_argument("--precision", default="auto", choices=list(PRECISIONS["inference"]),
                   help="arithmetic of the network (see `mgid derain --help`) [default: auto]")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help="largest upload accepted [default: %(default)s]")
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6, metavar="MP",
                   help="largest image accepted, read from its header before decoding [default: %(default)g]")
    p.add_argument("--max-memory", type=_bytes_argument, default=None, metavar="SIZE",
                   help="memory one de-raining may take, e.g. 4G (automatic tiling stays under it) [default: "
                        f"{PLANNED_SHARE * 100:.0f}%% of the memory available when each photo starts]")
    p.add_argument("--job-seconds", type=float, default=DEFAULT_JOB_SECONDS, metavar="S",
                   help="time limit of one photo, checked between tiles (503 past it) [default: %(default)g]")
    p.add_argument("--queue", type=int, default=DEFAULT_MAX_WAITING, metavar="N",
                   help="photos that may wait while one is de-rained; more get 503 with Retry-After "
                        "[default: %(default)s]")
    p.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT, metavar="S",
                   help="longest wait for the next bytes of a request; a connection silent this long is closed "
                        "(408 for an upload) [default: %(default)g]")
    p.add_argument("--upload-timeout", type=float, default=DEFAULT_UPLOAD_TIMEOUT, metavar="S",
                   help="an upload must arrive whole within S seconds of its connection, however it trickles "
                        "(408 past it) [default: %(default)g]")
    p.set_defaults(func=_web_command)


# --------------------------------------------------------------------------------------------------
# mgid evaluate


def _evaluate(args: argparse.Namespace) -> int:
    from mgid.checkpoint import CheckpointError
    from mgid.derain.derainer import load_model
    from mgid.derain.tiling import TILE_AUTO
    from mgid.eval.scoring import check_report_paths, evaluate_folders, evaluate_model, paired_folders

    prog = "mgid evaluate"
    channel = "rgb" if args.rgb else "y"
    if args.max_megapixels < 0:
        return _err(prog, f"--max-megapixels must be >= 0 (0 = no limit), got {args.max_megapixels:g}")
    if args.data is not None:
        if args.pred is not None or args.gt is not None:
            return _err(prog, "give either --data DIR (de-rain and score a paired set) or --pred DIR --gt DIR "
                              "(score existing predictions), not both")
        out = Path(args.out) if args.out else Path(f"eval_{Path(args.data).resolve().name}")
        try:
            paired_folders(args.data)  # a wrong folder is reported before the weights are loaded
            check_report_paths(out, args.overwrite, save_dir=out / "derained")  # ... and a wrong --out too
            derainer = load_model(args.weights, args.device, tile=args.tile, overlap=args.tile_overlap,
                                  self_ensemble=args.self_ensemble, max_memory=args.max_memory,
                                  **_precision_kwargs(args))
            print(f"{prog}: on {derainer.device}, {_arithmetic(derainer)}; {derainer.describe_tiling()}",
                  file=sys.stderr)
            report = evaluate_model(derainer, args.data, channel, save_dir=out / "derained", progress=not args.quiet,
                                    max_pixels=_max_pixels(args))
        except (FileNotFoundError, CheckpointError, RuntimeError, ValueError) as exc:
            return _err(prog, str(exc))
        except OSError as exc:  # a de-rained image could not be written (disk full, the folder went away)
            return _err(prog, f"could not write under {out}: {exc.strerror or exc}")
    else:
        if args.pred is None or args.gt is None:
            return _err(prog, "give --pred DIR --gt DIR (score predictions against clean images), or --data DIR "
                              "(a paired set with rain/ + norain/ or input/ + target/, de-rained with --weights or "
                              "the shipped weights)")
        if args.weights is not None or args.tile != TILE_AUTO or args.self_ensemble or args.max_memory is not None:
            return _err(prog, "--weights/--tile/--max-memory/--self-ensemble apply to --data only (with --pred the "
                              "images are already de-rained)")
        out = Path(args.out) if args.out else Path(args.pred)
        try:
            check_report_paths(out, args.overwrite)
            report = evaluate_folders(args.pred, args.gt, channel, progress=not args.quiet,
                                      max_pixels=_max_pixels(args))
        except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
            return _err(prog, str(exc))
    if not report.scores:  # one line, no summary of nothing
        return _err(prog, f"no pair could be scored between {report.predictions} and {report.targets}: "
                          f"{report.unscored()}")
    print(report.describe())  # before writing: a failed write loses no scores
    try:
        csv_path, json_path = report.write(out)
    except OSError as exc:
        return _err(prog, f"could not write the scores to {out} ({exc.strerror or exc}); they are printed above")
    print(f"per-image scores: {csv_path}; summary: {json_path}"
          + (f"; de-rained images: {out / 'derained'}" if args.data is not None else ""))
    if report.unmatched and not args.allow_missing:
        print(f"{prog}: {report.unmatched} file(s) without a partner were not scored (listed above): exit code "
              f"{EXIT_SKIPPED}; pass --allow-missing to accept a partial set", file=sys.stderr)
        return EXIT_SKIPPED
    return EXIT_SKIPPED if report.skipped else EXIT_OK


def register_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing metrics.csv / metrics.json (and, with --data, de-rained images)")
    p.add_argument("--allow-missing", action="store_true",
                   help="exit 0 even when some files have no partner (they are still listed and not scored)")
    _add_model_arguments(p)
    p.add_argument("--max-megapixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6, metavar="MP",
                   help="skip pairs with an image larger than this, judged from the file's header before anything "
                        "is decoded; 0 = no limit [default: %(default)g]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_evaluate)


# --------------------------------------------------------------------------------------------------
# mgid heldout


def _heldout(args: argparse.Namespace) -> int:
    from mgid.checkpoint import CheckpointError
    from mgid.data import write_image
    from mgid.derain.derainer import load_model, name_weights
    from mgid.eval.heldout import comparison_rows, evaluate_heldout, format_table, write_json
    from mgid.visualize import image_grid

    prog = "mgid heldout"
    try:
        named = name_weights(args.weights, args.names)
        derainers = {n: load_model(w, args.device, self_ensemble=args.self_ensemble, **_precision_kwargs(args))
                     for n, w in named.items()}
    except (FileNotFoundError, CheckpointError, RuntimeError, ValueError) as exc:
        return _err(prog, str(exc))
    first = next(iter(derainers.values()))
    print(f"{prog}: on {first.device}, {_arithmetic(first)}", file=sys.stderr)
    models = {n: d.derain for n, d in derainers.items()}
    try:
        table = evaluate_heldout(models, photo_folders=args.photo_folders, count=args.count,
                                 baselines=not args.no_baselines)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        return _err(prog, str(exc))
    print(format_table(table))
    out = Path(args.out)
    path = write_json(table, out / "heldout.json", weights=named, self_ensemble=args.self_ensemble)
    print(f"scores: {path}")
    if args.picture:
        rows, headers = comparison_rows(models, per_set=args.picture_rows, photo_folders=args.photo_folders)
        print(f"comparison: {write_image(out / 'heldout_compare.png', image_grid(rows, headers=headers))} "
              f"({' | '.join(headers)}; {args.picture_rows} images of each held-out set)")
    return EXIT_OK


def register_heldout(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heldout", help="score weights on the project's held-out sets, beside the rainy input and two baselines",
        description="De-rain the embedded held-out paired sets (streaks: the training renderer at the original rain "
                    "density; perspective: a second renderer never trained on; heavy: heavy rain; varied: several "
                    "directions, long streaks, drizzle, near-camera streaks; layered: the benchmarks' kind of rain, "
                    "noise streak layers and a veil; and one per --photo-folders DIR) with each --weights file and print "
                    "mean Y-channel PSNR / SSIM (paper convention) and the brightness shift (mean Y of output "
                    "minus clean, grey levels) beside the rainy input, a 3x3 median filter and the temporal "
                    "median of 8 rainy frames of the same scene. Writes OUT/heldout.json and, with --picture, "
                    "OUT/heldout_compare.png.")
    p.add_argument("--weights", nargs="+", metavar="FILE.safetensors",
                   help="weights to score (several allowed) [default: the shipped weights]")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a column name per --weights file")
    _add_device_argument(p)
    _add_precision_arguments(p)
    _add_self_ensemble_argument(p)
    p.add_argument("--count", type=int, default=None, metavar="N", help="images per set [default: all, 24]")
    p.add_argument("--photo-folders", nargs="+", default=(), metavar="DIR",
                   help="also score a set per folder of clean photos, named after it: its held-out photos (the 10 "
                        "per folder that training with --embedded.photo_folders never sees) under the streaks rain")
    p.add_argument("--out", default="eval_heldout", metavar="DIR", help="output folder [default: eval_heldout]")
    p.add_argument("--no-baselines", action="store_true", help="skip the median and temporal-median baselines")
    p.add_argument("--picture", action="store_true", help="also write a comparison picture")
    p.add_argument("--picture-rows", type=int, default=2, metavar="N", help="images per set in the picture [2]")
    p.set_defaults(func=_heldout)


# --------------------------------------------------------------------------------------------------
# mgid bench

#: The operator benchmark: a module of the source tree's ``benchmarks`` package, not of the installed ``mgid``.
BENCH_MODULE = "benchmarks.bench_ops"


def bench_source_tree() -> Path | None:
    """The folder holding the ``benchmarks`` package: the checkout this ``mgid`` was imported from (a source tree
    or an editable install), else the current folder; None where neither has it (a normal install run elsewhere)."""
    for root in (Path(__file__).resolve().parents[1], Path.cwd()):
        if (root / "benchmarks" / "__init__.py").is_file() and (root / "benchmarks" / "bench_ops.py").is_file():
            return root
    return None


def run_bench(argv: Sequence[str]) -> int:
    """Run ``python -m benchmarks.bench_ops`` with ``argv`` in this Python, the source tree first on
    ``PYTHONPATH``; its exit code (2 with a one-line error where no source tree has the benchmarks)."""
    root = bench_source_tree()
    if root is None:
        print("mgid bench: error: the benchmarks ship with the source tree only, not with an installed package: "
              "clone the repository and run `mgid bench` (or `python -m benchmarks.bench_ops`) in the checkout",
              file=sys.stderr)
        return EXIT_USAGE
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.call([sys.executable, "-m", BENCH_MODULE, *argv], env={**os.environ, "PYTHONPATH": path})


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", add_help=False, help="benchmark the memory/whitening ops (python -m "
                                                     "benchmarks.bench_ops of the source tree; options passed "
                                                     "through, see `mgid bench --help`)",
                       description="Runs python -m benchmarks.bench_ops with every argument passed through.")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: run_bench(args.args))


# --------------------------------------------------------------------------------------------------
# mgid info

def _info_command(args: argparse.Namespace) -> int:
    from mgid import info

    report = info.collect()
    print(json.dumps(report, indent=1) if args.json else info.format_report(report))
    return 0


def register_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="the build of the kernels, the CPU and its flags, what auto picks for training "
                                    "and inference, the shipped weights' hash",
                       description="Prints how mgid was built (kernels, CUDA arch list, CPU ISA copy), the CPU and "
                                   "its flags, what `auto` resolves to for training and inference (device, ops, "
                                   "arithmetic), the memory available and the shipped weights' SHA-256.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_info_command)


#: The subcommands by name, in --help order.
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "train": register_train, "finetune": register_finetune, "data": register_data, "derain": register_derain,
    "export": register_export, "evaluate": register_evaluate, "heldout": register_heldout, "web": register_web,
    "bench": register_bench, "info": register_info}


def build_parser(commands: Sequence[Callable[[argparse._SubParsersAction], None]] | None = None
                 ) -> argparse.ArgumentParser:
    """The ``mgid`` parser with ``commands`` (None: all of `COMMANDS`)."""
    parser = argparse.ArgumentParser(prog="mgid", description="MGID: memory-guided image de-raining trained on "
                                                              "time-lapse data.")
    parser.add_argument("--version", action="version", version=f"mgid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS.values() if commands is None else commands:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mgid`` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every option after `bench` belongs to bench_ops (argparse would claim -h)
        return run_bench(argv[1:])
    # A named command registers only its own parser: the train parsers import the trainer (scipy, scikit-image,
    # torch._dynamo: 210 MB and about 2 s), which `mgid web`'s long-lived process and `mgid derain` never use.
    named = COMMANDS.get(argv[0]) if argv else None
    args = build_parser([named] if named else None).parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
