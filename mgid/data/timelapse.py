"""Time-lapse training data: pairs of frames of one static scene with different rain, and `make_dataset`.

Every data set here returns, per index, a dict::

    {"frame1": (3, h, w) float32 in [-1, 1], "frame2": (3, h, w) float32 in [-1, 1], "scene": str}

where the two frames are two *different* frames of one scene, cut by the same random crop and the
same random horizontal flip. Sources:

* `EmbeddedTimeLapse`: the embedded default, scenes generated from photos bundled with
  scikit-image plus our synthetic rain (`mgid.data.synthetic_rain`); no download.
* `TimeLapseFolder`: real data on disk in one of three layouts (MGID side-by-side pairs, scene
  folders, flat ``<scene>_<frame>`` files).
* `make_dataset`: picks one of the two from a ``data`` argument (None or a path).

Reproducible randomness that is safe with DataLoader workers: the crop, flip and partner frame of
index ``i`` come from a NumPy generator seeded with ``(seed, epoch, i)`` only, never from global or
per-worker state, so any worker count gives the same samples. Call ``set_epoch(epoch)`` before each
epoch to get new crops (with ``persistent_workers=True`` the workers hold a copy of the data set
made when they started, so set the epoch before creating the iterator, or use non-persistent workers).

This module holds `make_dataset` and re-exports the names that used to live here; each concept has
its own module: `mgid.data.pair_sampling` (per-index RNG, crop/flip, the base pair Dataset),
`mgid.data.embedded` (`EmbeddedDataConfig`, `EmbeddedTimeLapse`), `mgid.data.heldout_sets`
(`HELDOUT_RAIN`, `HELDOUT_SETS`, `EmbeddedPairedSet`, `heldout_folder`), `mgid.data.synthetic_export`
(`write_synthetic_dataset`) and `mgid.data.folders` (`detect_layout`, `TimeLapseFolder`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from .embedded import _FRAME_STREAM as _FRAME_STREAM
from .embedded import _SCENE_STREAM as _SCENE_STREAM
from .embedded import _STREAM_IDS as _STREAM_IDS
from .embedded import EMBEDDED_MODES, EmbeddedDataConfig, EmbeddedMode, EmbeddedTimeLapse, SceneSpec, split_photos
from .embedded import _float01 as _float01
from .embedded import _make_scenes as _make_scenes
from .embedded import _scene_background as _scene_background
from .embedded import _uint8 as _uint8
from .folders import _SUFFIX_LIST as _SUFFIX_LIST
from .folders import LAYOUTS, MGID_MIN_ASPECT, Layout, TimeLapseFolder, detect_layout
from .folders import _scene_dirs as _scene_dirs
from .heldout_sets import _EXTRA_FRAME_STREAM as _EXTRA_FRAME_STREAM
from .heldout_sets import _HELDOUT_STREAM as _HELDOUT_STREAM
from .heldout_sets import HEAVY_RAIN, HELDOUT_RAIN, HELDOUT_SETS, EmbeddedPairedSet, heldout_folder
from .heldout_sets import _render_perspective as _render_perspective
from .heldout_sets import _render_streaks as _render_streaks
from .imageio import PathLike
from .pair_sampling import SPLITS, crop_flip_pair, index_rng, pad_to
from .pair_sampling import _as_hw as _as_hw
from .pair_sampling import _other_frame as _other_frame
from .pair_sampling import _PairDataset as _PairDataset
from .pair_sampling import _stable_id as _stable_id
from .synthetic_export import write_synthetic_dataset

__all__ = [
    "EMBEDDED_MODES",
    "HEAVY_RAIN",
    "HELDOUT_RAIN",
    "HELDOUT_SETS",
    "LAYOUTS",
    "MGID_MIN_ASPECT",
    "SPLITS",
    "EmbeddedDataConfig",
    "EmbeddedMode",
    "EmbeddedPairedSet",
    "EmbeddedTimeLapse",
    "Layout",
    "SceneSpec",
    "TimeLapseFolder",
    "crop_flip_pair",
    "detect_layout",
    "heldout_folder",
    "index_rng",
    "make_dataset",
    "pad_to",
    "split_photos",
    "write_synthetic_dataset",
]


def make_dataset(data: PathLike | None, split: str = "train", crop_size: int | Sequence[int] | None = 256,
                 seed: int = 0, *, embedded: EmbeddedDataConfig | None = None, layout: str = "auto",
                 flip: bool | None = None) -> Dataset:
    """The training/validation pair data set for a ``data`` setting.

    * ``data=None``: the embedded default, settings from ``embedded``: for "train" in stream mode
      `mgid.data.stream.StreamingTimeLapse` (new pairs rendered for every sample), otherwise
      `EmbeddedTimeLapse` (fixed scenes; "val" always).
    * ``data=PATH``: `TimeLapseFolder`. If PATH has a ``train/`` sub-folder (as written by
      `write_synthetic_dataset`), ``PATH/<split>`` is read; otherwise PATH itself is the training
      set and ``split="val"`` raises ``FileNotFoundError``.

    ``flip`` defaults to True for "train" and False for "val".
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    flip = (split == "train") if flip is None else flip
    if data is None:
        cfg = embedded or EmbeddedDataConfig()
        if cfg.mode == "stream" and split == "train":
            from .stream import StreamingTimeLapse  # imports this module

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
    return TimeLapseFolder(root, crop_size, layout=layout, seed=seed, flip=flip)
