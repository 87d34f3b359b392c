"""``mgid data synth``: write the embedded synthetic time-lapse set to a folder."""
from __future__ import annotations

import argparse
from dataclasses import asdict


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid data`` and its action ``synth`` to ``sub``."""
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
    synth.set_defaults(run=run_synth, prog=synth.prog)


def run_synth(args: argparse.Namespace) -> int:
    """Write the synthetic set ``args`` describe and say what was written; the exit code (0)."""
    from mgid.config.fields import build_dataclass, merge, overrides_from_args
    from mgid.config.train_config import resolve_config
    from mgid.data import EmbeddedDataConfig, write_synthetic_dataset

    base = resolve_config(args.config).embedded if args.config else EmbeddedDataConfig()
    cfg = build_dataclass(EmbeddedDataConfig, merge(asdict(base), overrides_from_args(args)))
    summary = write_synthetic_dataset(args.out, config=cfg, seed=args.seed, overwrite=args.overwrite,
                                      layout=args.layout)
    stored = ("as side-by-side pairs" if summary["layout"] == "mgid" else "in scene folders")
    print(f"wrote {summary['files']} images to {summary['root']}: {summary['train_scenes']} training scenes, "
          f"{summary['val_scenes']} validation scenes ({summary['frames_per_scene']} frames of "
          f"{summary['size']}x{summary['size']} each, {stored}), {summary['paired']} paired test images (paired/rain, "
          f"paired/norain)\ntrain on it: mgid train --data {summary['root']} --val_data {summary['root']}/paired")
    return 0
