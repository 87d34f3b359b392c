"""``mgid finetune``: fine-tune the weights on a user's own static camera's rainy clips."""
from __future__ import annotations

import argparse

from mgid.cli import common
from mgid.cli.train import add_train_arguments
from mgid.cli.train import run as run_training


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid finetune``'s parser to ``sub``."""
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
    common.add_weights_argument(p, "weights to start from")
    p.add_argument("--frames-per-clip", type=int, default=defaults.frames_per_clip, metavar="N",
                   help="frames sampled evenly over each clip [default: %(default)s]")
    p.add_argument("--max-shift", type=float, default=defaults.max_shift, metavar="PX",
                   help="largest camera shift against the first sampled frame, in pixels, still taken as a static "
                        "camera [default: %(default)s]")
    p.add_argument("--fps", type=float, default=None, help="frame rate of a folder of frames (for messages)")
    add_train_arguments(p)
    p.set_defaults(run=run, prog=p.prog, config=FINETUNE_RECIPE)


def run(args: argparse.Namespace) -> int:
    """Extract the clips' frames and train from ``--weights`` on them; the exit code (as `mgid.cli.train.run`)."""
    from mgid.train.finetune import ClipOptions, finetune_config

    clips = ClipOptions(args.video, args.weights, args.frames_per_clip, args.max_shift, args.fps)
    return run_training(args, prepare=lambda cfg: finetune_config(cfg, clips, extract=not args.print_config))
