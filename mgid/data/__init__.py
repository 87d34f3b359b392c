"""Data for MGID: image I/O, bundled photos, synthetic rain, time-lapse pairs and paired test sets.

Network tensors are (3, H, W) float32 in [-1, 1] (RGB, ``x / 127.5 - 1``); host images are (H, W, 3) uint8 RGB
(`mgid.data.imageio`). Every time-lapse data set returns, per index, two *different* frames of one scene cut by
the same random crop and flip::

    {"frame1": (3, h, w) float32 in [-1, 1], "frame2": (3, h, w) float32 in [-1, 1], "scene": str}

`make_dataset` picks the data set for a ``data`` setting: `StreamingTimeLapse` / `EmbeddedTimeLapse` (the
embedded default, no download) or `TimeLapseFolder` (real data on disk). Call ``set_epoch(epoch)`` before each
epoch for new crops. Sources and reproducibility: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from mgid.errors import InputError

from .embedded import EmbeddedDataConfig, EmbeddedTimeLapse
from .folders import PairPreprocessing, TimeLapseFolder, detect_layout
from .heldout_sets import EmbeddedPairedSet
from .imageio import IMAGE_SUFFIXES, PathLike, image_size, list_images, read_image, to_tensor, to_uint8, write_image
from .layer_rain import LayerRainConfig, render_layer_rain
from .pair_sampling import SPLITS
from .paired import PairedFolder, PairingResult, find_pairs
from .photos import list_photos, load_photo
from .stream import StreamingTimeLapse
from .synthetic_export import write_synthetic_dataset
from .synthetic_rain import RainConfig, add_rain, render_rain_layer

__all__ = [
    "IMAGE_SUFFIXES",
    "EmbeddedDataConfig",
    "EmbeddedPairedSet",
    "EmbeddedTimeLapse",
    "LayerRainConfig",
    "PairedFolder",
    "PairingResult",
    "RainConfig",
    "StreamingTimeLapse",
    "TimeLapseFolder",
    "add_rain",
    "detect_layout",
    "find_pairs",
    "image_size",
    "list_images",
    "list_photos",
    "load_photo",
    "make_dataset",
    "read_image",
    "render_layer_rain",
    "render_rain_layer",
    "to_tensor",
    "to_uint8",
    "write_image",
    "write_synthetic_dataset",
]


def make_dataset(data: PathLike | None, split: str = "train", crop_size: int | Sequence[int] | None = 256,
                 seed: int = 0, *, embedded: EmbeddedDataConfig | None = None, layout: str = "auto",
                 flip: bool | None = None, pair_preprocessing: PairPreprocessing = "crop") -> Dataset:
    """The training/validation pair data set for a ``data`` setting.

    Args:
        data: ``None`` for the embedded default: for ``"train"`` in stream mode
            `mgid.data.stream.StreamingTimeLapse` (new pairs rendered for every sample), otherwise
            `EmbeddedTimeLapse` (fixed scenes; ``"val"`` always). A path for `TimeLapseFolder`: if it has a
            ``train/`` sub-folder (as written by `write_synthetic_dataset`), ``PATH/<split>`` is read; otherwise
            PATH itself is the training set.
        split: ``"train"`` or ``"val"`` (`SPLITS`).
        crop_size: side of the square crop, or (h, w); ``None`` keeps whole frames (not for the streamed set).
        seed: seed of the per-index random streams.
        embedded: settings of the embedded data (default ``EmbeddedDataConfig()``); ignored with a path.
        layout: folder layout for a path: ``"auto"``, ``"mgid"``, ``"scenes"`` or ``"flat"``.
        flip: random horizontal flips; default True for ``"train"``, False for ``"val"``.
        pair_preprocessing: ``"crop"`` or ``"official"`` (see `TimeLapseFolder`); applies to MGID side-by-side
            pair folders only, the embedded data and the other layouts crop.

    Returns:
        A `torch.utils.data.Dataset` of ``{"frame1", "frame2", "scene"}`` samples.

    Raises:
        InputError: ``split`` is not one of `SPLITS`, or the streamed set is asked for without ``crop_size``.
        FileNotFoundError: ``data`` does not exist, lacks the ``<split>/`` folder next to ``train/``, or has
            no ``train/`` and ``val/`` sub-folders when ``split="val"``.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    flip = (split == "train") if flip is None else flip
    if data is None:
        cfg = embedded or EmbeddedDataConfig()
        if cfg.mode == "stream" and split == "train":
            if crop_size is None:
                raise InputError("the streamed embedded data set renders crops: give a crop_size")
            return StreamingTimeLapse(config=cfg, crop_size=crop_size, seed=seed)
        return EmbeddedTimeLapse(split, config=cfg, crop_size=crop_size, seed=seed, flip=flip)
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"time-lapse data folder not found: {root}; check the path (or leave the data "
                                f"path unset to use the embedded synthetic set)")
    if (root / "train").is_dir():
        root = root / split
        if not root.is_dir():
            raise FileNotFoundError(f"{data} has train/ but no {split}/ folder; add {root} or go without validation")
    elif split != "train":
        raise FileNotFoundError(f"{data} has no train/ and val/ sub-folders, so there is no validation split; "
                                f"arrange it as {root}/train and {root}/val")
    return TimeLapseFolder(root, crop_size, layout=layout, seed=seed, flip=flip, pair_preprocessing=pair_preprocessing)
