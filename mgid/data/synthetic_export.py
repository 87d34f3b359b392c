"""Writing the embedded synthetic data set to disk (`write_synthetic_dataset`).

The training and validation scenes of `EmbeddedTimeLapse` go to scene folders readable by
`TimeLapseFolder`, and every held-out paired set of `EmbeddedPairedSet` to ``rain/`` + ``norain/``
folders with Rain100L naming, holding exactly the frames the in-memory data sets produce for the
same config and seed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from mgid.errors import InputError

from .embedded import EmbeddedDataConfig, EmbeddedTimeLapse
from .heldout_sets import HELDOUT_SETS, EmbeddedPairedSet, heldout_folder
from .imageio import PathLike, write_image
from .pair_sampling import SPLITS

#: How `write_synthetic_dataset` stores the scenes: a folder of frames per scene, or the official MGID
#: side-by-side pair images (two frames of one scene in one image, left and right).
ExportLayout = Literal["scenes", "mgid"]
EXPORT_LAYOUTS = get_args(ExportLayout)


def write_synthetic_dataset(out_dir: PathLike, *, config: EmbeddedDataConfig | None = None, seed: int = 0,
                            paired_count: int | None = None, overwrite: bool = False,
                            layout: ExportLayout = "scenes") -> dict[str, Any]:
    """Write the embedded default data set to disk (with ``config.photo_folders``, scenes of their photos too).

    Layout::

        OUT/train/<scene>/<frame>.png      scene folders (layout "scenes", readable by TimeLapseFolder)
        OUT/val/<scene>/<frame>.png
        OUT/train/<scene>-<k>.png          or (layout "mgid") the official MGID side-by-side pairs: frames 2k
        OUT/val/<scene>-<k>.png            (left) and 2k + 1 (right) of a scene in one 2 size x size image
        OUT/paired/rain/rain-001.png       held-out paired set "streaks", Rain100L naming
        OUT/paired/norain/norain-001.png
        OUT/paired_perspective/...         held-out set "perspective" (the second renderer)
        OUT/paired_heavy/...               held-out set "heavy"

    The files hold exactly the frames `EmbeddedTimeLapse` / `EmbeddedPairedSet` produce for the same
    config and seed.

    Args:
        out_dir: the folder ``OUT`` (created when missing).
        config: the embedded data settings (None, the default: ``EmbeddedDataConfig()``).
        seed: fixes the training and validation scenes and their rain. Default 0.
        paired_count: images in each held-out paired set (None, the default: ``config.paired_count``).
        overwrite: write into an ``OUT`` that already has ``train/``, ``val/`` or a held-out set's folder.
            Default False.
        layout: ``"scenes"`` (the default) or ``"mgid"`` (`ExportLayout`).

    Returns:
        A summary: ``root``, ``seed``, ``size``, ``frames_per_scene``, ``layout``, ``<split>_scenes`` and
        ``<split>_photos`` per split, the image count of each held-out set's folder, and ``files`` (all files
        written).

    Raises:
        FileExistsError: ``OUT`` already has one of those folders and ``overwrite`` is False.
        InputError: an unknown ``layout``, or settings `EmbeddedTimeLapse` / `EmbeddedPairedSet` refuse.
        FileNotFoundError: no bundled photos are available, or a photo folder is missing.
    """
    cfg = config or EmbeddedDataConfig()
    if paired_count is not None:
        cfg = dataclasses.replace(cfg, paired_count=int(paired_count))
    out = Path(out_dir)
    existing = [d for d in ("train", "val", *map(heldout_folder, HELDOUT_SETS)) if (out / d).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already contains {', '.join(existing)}/; choose an empty folder "
                              f"or pass overwrite=True")
    if layout not in EXPORT_LAYOUTS:
        raise InputError(f"layout must be one of {', '.join(EXPORT_LAYOUTS)}, got {layout!r}")
    summary: dict[str, Any] = {"root": str(out), "seed": int(seed), "size": cfg.size,
                               "frames_per_scene": cfg.frames_per_scene, "layout": layout}
    files = 0
    for split in SPLITS:
        ds = EmbeddedTimeLapse(split, config=cfg, seed=seed)
        for k, spec in enumerate(ds.scenes):
            if layout == "scenes":
                for f in range(cfg.frames_per_scene):
                    write_image(out / split / spec.name / f"{f:03d}.png", ds.render_frame(k, f)[0])
                    files += 1
                continue
            for pair in range(cfg.frames_per_scene // 2):
                left, right = ds.render_frame(k, 2 * pair)[0], ds.render_frame(k, 2 * pair + 1)[0]
                write_image(out / split / f"{spec.name}-{pair}.png", np.concatenate([left, right], axis=1))
                files += 1
        summary[f"{split}_scenes"] = len(ds.scenes)
        summary[f"{split}_photos"] = list(ds.photos)
    for kind in HELDOUT_SETS:
        paired = EmbeddedPairedSet(config=cfg, rain=kind)
        folder = out / heldout_folder(kind)
        for i in range(len(paired)):
            rainy, clean = paired.images(i)
            write_image(folder / "rain" / f"rain-{paired.name(i)}.png", rainy)
            write_image(folder / "norain" / f"norain-{paired.name(i)}.png", clean)
            files += 2
        summary[heldout_folder(kind)] = len(paired)
    summary["files"] = files
    return summary
