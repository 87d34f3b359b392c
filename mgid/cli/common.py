"""What the ``mgid`` commands share: exit codes, the one error handler, and the options several commands take."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from mgid.errors import MgidError

if TYPE_CHECKING:
    from mgid.derain.derainer import BaseDerainer

#: Exit codes of the commands: done; done, but some files were skipped; nothing done (bad arguments or input).
EXIT_OK, EXIT_SKIPPED, EXIT_USAGE = 0, 1, 2

#: The forms ``--weights`` takes, for every command that loads weights.
WEIGHTS_FORMS = ("NAME.safetensors with NAME.json beside it, a `mgid train` output folder, or a folder holding "
                 "config.json + model.safetensors (mgid.save_pretrained, a Hugging Face Hub download)")
#: What a command uses without ``--weights``.
SHIPPED_WEIGHTS = "the shipped weights mgid/weights/mgid_embedded.safetensors"


class UsageError(MgidError, ValueError):
    """Options that are out of range or do not go together."""


class WriteError(MgidError, OSError):
    """A result could not be written (disk full, the folder went away); the message says what and why."""


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run one command: the command line's only error handler.

    Args:
        run: The command's run function; returns its exit code.
        args: The parsed options.
        prog: The command's name in messages (``mgid derain``, ``train.py``).

    Returns:
        ``run``'s exit code, or `EXIT_USAGE` after printing ``PROG: error: MESSAGE`` to stderr when it raised an
        `MgidError` (bad input, settings, files, limits: what mgid raises on purpose) or an `OSError` (a file or the
        network); anything else (a bug, a kernel or library failure) propagates as a traceback.
    """
    try:
        return int(run(args))
    except (MgidError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def os_error_text(exc: OSError) -> str:
    """An `OSError` in words: its ``strerror`` (``No space left on device``) when it has one."""
    return str(exc.strerror or exc)


def add_weights_argument(p: argparse.ArgumentParser, purpose: str, several: bool = False) -> None:
    """``--weights``: one checkpoint (or several with ``several``), described by ``purpose`` ("weights to use")."""
    p.add_argument("--weights", nargs="+" if several else None, metavar="PATH",
                   help=f"{purpose}: {WEIGHTS_FORMS} [default: {SHIPPED_WEIGHTS}]")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    """``--device``: the values training's ``--device`` takes (`mgid.devices` resolves them)."""
    from mgid.config.train_config import DEVICES

    p.add_argument("--device", default="auto", choices=list(DEVICES),
                   help="where to run [default: auto = cuda when available]")


def add_precision_arguments(p: argparse.ArgumentParser, channels_last: bool = True) -> None:
    """``--precision`` and (with ``channels_last``) ``--channels-last`` of inference (`mgid.precision`)."""
    from mgid.precision import CHANNELS_LAST_SETTINGS, PRECISIONS

    p.add_argument("--precision", default="auto", choices=list(PRECISIONS["inference"]),
                   help="arithmetic of the network (frozen for inference: BatchNorm folded into the convolutions): "
                        "fp32, or bf16 = bfloat16 weights and activations (the norm, memory read and output in fp32); "
                        "auto = bf16 on a CPU whose native bf16 instructions (AVX512-BF16 or AMX) torch can "
                        "use, fp32 elsewhere (GPUs included); the command prints what auto chose and why "
                        "[default: auto]")
    if channels_last:
        p.add_argument("--channels-last", default="auto", choices=list(CHANNELS_LAST_SETTINGS),
                       help="channels_last memory format for the network and its inputs; auto = on on a CPU, "
                            "except fp32 without AVX512, which runs NCHW on NNPACK's Winograd convolutions; off "
                            "elsewhere [default: auto]")


def precision_kwargs(args: argparse.Namespace) -> dict:
    """`mgid.load_model` keyword arguments of ``--precision`` / ``--channels-last``."""
    from mgid.precision import CHANNELS_LAST_SETTINGS

    return {"precision": args.precision, "channels_last": CHANNELS_LAST_SETTINGS[args.channels_last]}


def add_self_ensemble_argument(p: argparse.ArgumentParser) -> None:
    """``--self-ensemble``: average the rain layer over the 8 flips and quarter turns."""
    p.add_argument("--self-ensemble", action="store_true",
                   help="average the rain layer over the 8 flips and quarter turns of each image (geometric "
                        "self-ensemble): 8x the time; with the shipped weights it lowers the scores (quarter "
                        "turns make rain horizontal) [default: off]")


def tile_argument(text: str) -> int | str | None:
    """``--tile``: ``auto``, ``none`` (whole images) or a size in pixels."""
    from mgid.derain.tiling import TILE_AUTO

    if text.lower() in (TILE_AUTO, "none"):
        return TILE_AUTO if text.lower() == TILE_AUTO else None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, none or a tile size in pixels, got {text!r}") from None


def bytes_argument(text: str) -> int:
    """``--max-memory``: a size such as 4G (`mgid.derain.memory_budget.parse_bytes`)."""
    from mgid.derain.memory_budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_max_memory_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--max-memory``: the budget of automatic tiling for ``what`` ("the de-raining of one image")."""
    from mgid.derain.memory_budget import PLANNED_SHARE

    p.add_argument("--max-memory", type=bytes_argument, default=None, metavar="SIZE",
                   help=f"memory {what} may take, e.g. 4G or 512M (automatic tiling stays under it; the limit "
                        "that applies to the process caps it: available memory, cgroup, ulimit -v) "
                        f"[default: {PLANNED_SHARE * 100:.0f}%% of what that limit leaves when each image starts]")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options that load and run a network on images: weights, device, precision, tiling, self-ensemble."""
    from mgid.derain.tiling import DEFAULT_OVERLAP, TILE_AUTO

    add_weights_argument(p, "weights to use")
    add_device_argument(p)
    add_precision_arguments(p)
    p.add_argument("--tile", type=tile_argument, default=TILE_AUTO, metavar="auto|none|SIZE",
                   help="auto: the whole image when it fits the memory budget (--max-memory), else the largest "
                        "tiles that do, from the measured bytes per pixel of the network (the source is printed); "
                        "none: whole images; SIZE: SIZE x SIZE tiles (a multiple of 8, e.g. 512). Tiles share "
                        "the whole image's normalisation statistics [default: auto]")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP, metavar="PX",
                   help="overlap of neighbouring tiles, blended smoothly (rounded up to a multiple of 8) "
                        "[default: %(default)s]")
    add_max_memory_argument(p, "the de-raining of one image")
    add_self_ensemble_argument(p)


def add_max_megapixels_argument(p: argparse.ArgumentParser, default: float, what: str, zero_unlimited: bool) -> None:
    """``--max-megapixels`` with ``default`` megapixels; ``what`` says what is refused beyond it, ``zero_unlimited``
    whether 0 means no limit."""
    p.add_argument("--max-megapixels", type=float, default=default, metavar="MP",
                   help=f"{what}, judged from the file's header before anything is decoded (a few-kilobyte PNG can "
                        "claim 400 megapixels)" + ("; 0 = no limit" if zero_unlimited else "")
                        + " [default: %(default)g]")


def check_max_megapixels(args: argparse.Namespace) -> int | None:
    """``--max-megapixels`` (0 = no limit) as a pixel count, None for no limit.

    Raises:
        UsageError: It is negative.
    """
    if args.max_megapixels < 0:
        raise UsageError(f"--max-megapixels must be >= 0 (0 = no limit), got {args.max_megapixels:g}")
    return int(args.max_megapixels * 1e6) if args.max_megapixels > 0 else None


def add_overwrite_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: replace ``what`` ("existing outputs (never inputs)")."""
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar."""
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def describe_arithmetic(derainer: BaseDerainer) -> str:
    """How a derainer computes and why, for messages ("fp32 (auto precision ...)"), and whether it averages the 8
    flips/turns."""
    return derainer.arithmetic.describe() + (", self-ensemble of 8 flips/turns" if derainer.self_ensemble else "")
