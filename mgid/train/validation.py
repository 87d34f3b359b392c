"""Validation during training and the end-of-run comparison picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from mgid.config.train_config import TrainConfig
from mgid.data import PairedFolder, to_uint8, write_image
from mgid.data.heldout_sets import HELDOUT_SETS
from mgid.eval.heldout import heldout_sets
from mgid.eval.scoring import Scores, net_derain_fn, score_paired_set
from mgid.models import MGIDNet
from mgid.visualize import image_grid


def build_paired_sets(cfg: TrainConfig) -> dict[str, Dataset]:
    """The validation pairs by name: ``{"val": val_data}`` (a paired folder), or the embedded held-out
    sets (`mgid.eval.heldout.heldout_sets`: every rain of `mgid.data.heldout_sets.HELDOUT_SETS`, then one per
    photo folder of ``embedded.photo_folders``, of its held-out photos). The first is the
    primary one (progress line, checkpoint summary, comparison picture)."""
    if cfg.val_data is not None:
        paired: Dataset = PairedFolder(cfg.val_data)
        if cfg.val_count is not None and cfg.val_count < len(paired):
            paired = Subset(paired, range(cfg.val_count))
        return {"val": paired}
    return heldout_sets(HELDOUT_SETS, cfg.embedded.photo_folders, count=cfg.val_count, config=cfg.embedded)


def validate(net: MGIDNet, paired: Dataset, device: torch.device) -> Scores:
    """Mean PSNR/SSIM of ``net``'s output and of the rainy input against the clean images of ``paired``
    (`mgid.eval.scoring.score_paired_set`, the loop of ``mgid evaluate`` and ``mgid heldout``)."""
    return score_paired_set(paired, net_derain_fn(net, device))


def write_comparison(net: MGIDNet, paired: Dataset, device: torch.device, path: Path, rows: int) -> Path:
    """``path``: a grid of ``rows`` held-out images, columns rainy | de-rained | clean.

    Images of a size other than the first one's are skipped (a grid needs one size).
    """
    grid_rows: list[list[np.ndarray]] = []
    derain = net_derain_fn(net, device)
    for i in range(len(paired)):
        if len(grid_rows) == rows:
            break
        item = paired[i]
        rainy, clean = to_uint8(item["rainy"]), to_uint8(item["clean"])
        if grid_rows and rainy.shape != grid_rows[0][0].shape:
            continue
        grid_rows.append([rainy, derain(rainy), clean])
    return write_image(path, image_grid(grid_rows, headers=("rainy", "de-rained", "clean")))
