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
    """Build a run's validation sets by name; the first is the primary one (progress line, checkpoint summary,
    comparison picture).

    Args:
        cfg: the run's settings: ``val_data`` (a paired folder, or None for the embedded held-out sets),
            ``val_count`` (images per set, None: all of a folder, the default count of the held-out sets) and
            ``embedded`` (its ``photo_folders`` add one held-out set each).

    Returns:
        ``{"val": PairedFolder}`` (`mgid.data.PairedFolder`, cut to its first ``val_count`` pairs) when
        ``val_data`` is set, else the embedded held-out sets (`mgid.eval.heldout.heldout_sets`: every rain of
        `mgid.data.heldout_sets.HELDOUT_SETS`, then one per photo folder, of its held-out photos).

    Raises:
        FileNotFoundError: a folder of ``val_data`` is missing.
        InputError: ``val_data`` holds no (rainy, clean) pair, or two photo folders share a name.
    """
    if cfg.val_data is not None:
        paired: Dataset = PairedFolder(cfg.val_data)
        if cfg.val_count is not None and cfg.val_count < len(paired):
            paired = Subset(paired, range(cfg.val_count))
        return {"val": paired}
    return heldout_sets(HELDOUT_SETS, cfg.embedded.photo_folders, count=cfg.val_count, config=cfg.embedded)


def validate(net: MGIDNet, paired: Dataset, device: torch.device) -> Scores:
    """Score ``net`` on a paired set: the loop of ``mgid evaluate`` and ``mgid heldout``.

    Args:
        net: the network; its ``derain`` runs in fp32 on whole images, without gradients
            (`mgid.eval.scoring.net_derain_fn`).
        paired: items ``{"rainy", "clean"}`` (3, H, W) float tensors in [-1, 1].
        device: where ``net`` runs.

    Returns:
        The mean PSNR/SSIM (on the Y channel) of ``net``'s output and of the rainy input against the clean
        images (`mgid.eval.scoring.score_paired_set`).

    Raises:
        InputError: a rainy image whose size differs from its clean one (`mgid.data.PairedFolder`).
    """
    return score_paired_set(paired, net_derain_fn(net, device))


def write_comparison(net: MGIDNet, paired: Dataset, device: torch.device, path: Path, rows: int) -> Path:
    """Write a picture of ``rows`` held-out images, columns rainy | de-rained | clean.

    Images of a size other than the first one's are skipped (a grid needs one size).

    Args:
        net: the network (as in `validate`).
        paired: items ``{"rainy", "clean"}`` (3, H, W) float tensors in [-1, 1].
        device: where ``net`` runs.
        path: the image file to write (its suffix picks the format; folders are created).
        rows: at most this many images (fewer when ``paired`` has fewer of the first one's size).

    Returns:
        The path written.

    Raises:
        InputError: ``path`` has an unknown image suffix, or ``paired`` is empty (`mgid.visualize.image_grid`).
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
