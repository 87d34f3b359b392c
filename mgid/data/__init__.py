"""Data for MGID: image I/O, bundled photos, synthetic rain, time-lapse pairs and paired test sets.

Network tensors are (3, H, W) float32 in [-1, 1] (RGB, ``x / 127.5 - 1``); host images are HxWx3
uint8 RGB. See `mgid.data.imageio`.

Every time-lapse data set returns, per index, a dict::

    {"frame1": (3, h, w) float32 in [-1, 1], "frame2": (3, h, w) float32 in [-1, 1], "scene": str}

where the two frames are two *different* frames of one scene, cut by the same random crop and the
same random horizontal flip. Sources, one module each:

* `mgid.data.embedded` (`EmbeddedTimeLapse`): the embedded default, fixed scenes generated from photos
  bundled with scikit-image plus our synthetic rain (`mgid.data.synthetic_rain`, and the benchmarks'
  Photoshop-style streak layers of `mgid.data.layer_rain` as one of its kinds); no download.
* `mgid.data.stream` (`StreamingTimeLapse`): the embedded default with new pairs rendered for every sample.
* `mgid.data.folders` (`TimeLapseFolder`): real data on disk in one of three layouts (MGID side-by-side
  pairs, scene folders, flat ``<scene>_<frame>`` files).
* `make_dataset` (here): picks one of them from a ``data`` argument (None or a path).

Reproducible randomness that is safe with DataLoader workers (`mgid.data.pair_sampling`): the crop, flip
and partner frame of index ``i`` come from a NumPy generator seeded with ``(seed, epoch, i)`` only, never
from global or per-worker state, so any worker count gives the same samples. Call ``set_epoch(epoch)``
before each epoch to get new crops (with ``persistent_workers=True`` the workers hold a copy of the data
set made when they started, so set the epoch before creating the iterator, or use non-persistent workers).
Held-out paired sets: `mgid.data.heldout_sets`; video clips as scenes: `mgid.data.video_scenes`; video
I/O: `mgid.data.video`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

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

    * ``data=None``: the embedded default, settings from ``embedded``: for "train" in stream mode
      `mgid.data.stream.StreamingTimeLapse` (new pairs rendered for every sample), otherwise
      `EmbeddedTimeLapse` (fixed scenes; "val" always).
    * ``data=PATH``: `TimeLapseFolder`. If PATH has a ``train/`` sub-folder (as written by
      `write_synthetic_dataset`), ``PATH/<split>`` is read; otherwise PATH itself is the training
      set and ``split="val"`` raises ``FileNotFoundError``.

    ``flip`` defaults to True for "train" and False for "val". ``pair_preprocessing`` ("crop" or "official", see
    `TimeLapseFolder`) applies to MGID side-by-side pair folders only; the embedded data and the other layouts crop.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    flip = (split == "train") if flip is None else flip
    if data is None:
        cfg = embedded or EmbeddedDataConfig()
        if cfg.mode == "stream" and split == "train":
            if crop_size is None:
                raise ValueError("the streamed embedded data set renders crops: give a crop_size")
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
