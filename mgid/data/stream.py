"""Time-lapse training pairs rendered on the fly: a fresh background and two fresh rain frames per sample.

`StreamingTimeLapse` is the embedded default's training set (``EmbeddedDataConfig.mode = "stream"``); sample
``i`` of epoch ``e`` depends on ``(seed, e, i)`` alone. `sample_background`, `photo_background` and
`jitter_colours` make its clean backgrounds. How a sample is made: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from mgid.errors import InputError

from .embedded import EmbeddedDataConfig, _float01, _uint8, split_photos
from .imageio import to_tensor
from .pair_sampling import _PairDataset, index_rng
from .photo_folders import PhotoFolders
from .photos import load_photo
from .procedural import dead_leaves
from .synthetic_rain import add_rain

#: Photos a training background may come from (the training split of `split_photos`).
_TRAIN = "train"


def jitter_colours(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Jitter the colours of an image: per-channel gain, saturation and contrast.

    Every factor is drawn in ``1 +- strength`` (saturation ``1 +- 2 strength``); ``strength = 0``
    returns the image unchanged (but still draws the numbers, to keep the stream fixed).

    Args:
        img: (H, W, 3) float32 in [0, 1].
        rng: the sample's random stream (five numbers are drawn).
        strength: the jitter's strength (`EmbeddedDataConfig.colour_jitter`: in [0, 0.5)).

    Returns:
        (H, W, 3) float32 in [0, 1] (``img`` itself for ``strength = 0``).
    """
    gains = rng.uniform(1.0 - strength, 1.0 + strength, 3).astype(np.float32)
    sat = np.float32(rng.uniform(1.0 - 2 * strength, 1.0 + 2 * strength))
    contrast = np.float32(rng.uniform(1.0 - strength, 1.0 + strength))
    if strength == 0:
        return img
    out = img * gains
    grey = out.mean(axis=2, keepdims=True)
    out = grey + sat * (out - grey)
    mean = out.mean()
    return np.clip(mean + contrast * (out - mean), 0.0, 1.0).astype(np.float32)


def photo_background(photo: np.ndarray, hw: tuple[int, int], rng: np.random.Generator,
                     config: EmbeddedDataConfig) -> np.ndarray:
    """Cut a random region of a photo as a background: zoom, crop, flip, 90-degree turn, colour jitter.

    The zoom (output pixels per photo pixel) is drawn log-uniformly in ``config.zoom_range`` and
    raised where the photo is too small for the region.

    Args:
        photo: (H, W, 3) uint8 RGB.
        hw: (h, w) of the background.
        rng: the sample's random stream.
        config: the embedded data settings (``zoom_range``, ``rotate90``, ``colour_jitter``).

    Returns:
        (h, w, 3) float32 in [0, 1].
    """
    h, w = hw
    turn = int(rng.integers(0, 4)) if config.rotate90 else 0
    # a quarter turn swaps the sides, so cut the region in the turned orientation
    rh, rw = (w, h) if turn % 2 else (h, w)
    lo, hi = config.zoom_range
    zoom = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    ph, pw = photo.shape[:2]
    zoom = max(zoom, rh / ph, rw / pw)
    sh, sw = min(ph, max(1, round(rh / zoom))), min(pw, max(1, round(rw / zoom)))
    top, left = int(rng.integers(0, ph - sh + 1)), int(rng.integers(0, pw - sw + 1))
    region = np.ascontiguousarray(photo[top:top + sh, left:left + sw])
    interp = cv2.INTER_AREA if sh > rh else cv2.INTER_CUBIC
    img = _float01(cv2.resize(region, (rw, rh), interpolation=interp))
    if rng.random() < 0.5:
        img = img[:, ::-1]
    img = np.ascontiguousarray(np.rot90(img, turn))
    return jitter_colours(np.clip(img, 0.0, 1.0), rng, config.colour_jitter)


def sample_background(hw: tuple[int, int], rng: np.random.Generator, config: EmbeddedDataConfig,
                      photos: tuple[str, ...], folders: Sequence[PhotoFolders] = ()) -> tuple[np.ndarray, str]:
    """Draw a clean background: a photo region (`photo_background`) or a procedural dead-leaves scene.

    With ``folders`` a first draw picks a folder with its share (`EmbeddedDataConfig.folder_shares`) or, for
    the rest, the sources used without folders; without folders that draw is not made, so the stream is what it
    was before folders existed.

    Args:
        hw: (h, w) of the background.
        rng: the sample's random stream.
        config: the embedded data settings (``procedural_probability``, ``dead_leaves``, the photo settings).
        photos: names of the bundled photos to draw from (empty: procedural scenes only, folders aside).
        folders: one `PhotoFolders` per entry of ``config.photo_folders`` (default: none).

    Returns:
        (background (h, w, 3) float32 in [0, 1], its source: ``"dead-leaves"``, a bundled photo's name or a folder
        photo's ``<folder>/<file>``).
    """
    if folders:
        shares = np.cumsum(config.folder_shares())
        k = int(np.searchsorted(shares, rng.random(), side="right"))
        if k < len(folders):
            img, i = folders[k].load(int(rng.integers(0, len(folders[k]))))
            return photo_background(img, hw, rng, config), folders[k].name(i)
    if not photos or rng.random() < config.procedural_probability:
        return dead_leaves(hw, rng, config.dead_leaves), "dead-leaves"
    name = photos[int(rng.integers(0, len(photos)))]
    return photo_background(load_photo(name), hw, rng, config), name


class StreamingTimeLapse(_PairDataset):
    """Endless time-lapse pairs: every sample is a new background with two new rain frames.

    Returns ``{"frame1", "frame2"}`` (3, h, w) float32 in [-1, 1] and ``"scene"`` (the background's
    source and the sample index). Samples depend only on ``(seed, epoch, index)``: call
    ``set_epoch`` for new ones.

    Args:
        config: the embedded data settings (``pairs_per_epoch``, backgrounds, ``rain``; None, the default:
            ``EmbeddedDataConfig()``).
        crop_size: side (or (h, w)) of the rendered frames. Default 128.
        seed: fixes every sample (with the epoch and the index). Default 0.

    Attributes:
        config: the settings used.
        photos: the bundled photos backgrounds are cut from (the ``"train"`` split of `split_photos`).
        folders: the training photos of each photo folder (`EmbeddedDataConfig.photo_sets`).

    Raises:
        InputError: ``crop_size`` is None or not valid, bad ``val_photos``, or a photo folder without usable
            photos.
        FileNotFoundError: no bundled photos are available, or a photo folder is missing.
        NotADirectoryError: a photo folder is a file.
    """

    def __init__(self, *, config: EmbeddedDataConfig | None = None, crop_size: int | tuple[int, int] = 128,
                 seed: int = 0) -> None:
        super().__init__(crop_size, seed, flip=False)  # flips are part of the background sampling
        if self.crop is None:
            raise InputError("StreamingTimeLapse needs a crop_size (the side of the rendered frames)")
        self.config = config or EmbeddedDataConfig()
        self.photos = split_photos(self.config)[_TRAIN]
        self.folders = self.config.photo_sets(_TRAIN, min_side=min(self.crop))

    def __len__(self) -> int:
        return self.config.pairs_per_epoch

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """Render sample ``index`` of the current epoch.

        Args:
            index: the sample, in ``[0, pairs_per_epoch)``.

        Returns:
            (frame1, frame2, clean, source): three (h, w, 3) uint8 RGB images (two rainy frames and their clean
            background) and the background's source (as `sample_background`).
        """
        rng = index_rng(self.seed, self.epoch, index)
        clean, source = sample_background(self.crop, rng, self.config, self.photos, self.folders)
        frames = [_uint8(add_rain(clean, rng, self.config.rain)[0]) for _ in range(2)]
        return frames[0], frames[1], _uint8(clean), source

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for StreamingTimeLapse of length {n}")
        index %= n
        a, b, _, source = self.render(index)
        return {"frame1": to_tensor(a), "frame2": to_tensor(b), "scene": f"{source}#{self.epoch}.{index}"}


__all__ = ["StreamingTimeLapse", "jitter_colours", "photo_background", "sample_background"]
