"""Pair sampling shared by the time-lapse data sets: per-index RNG, the common crop/flip and the base Dataset.

`index_rng` seeds index ``i``'s randomness with ``(seed, epoch, i)`` only, so any DataLoader worker count gives
the same samples; `crop_flip_pair` cuts two frames by the same crop and flip; `pad_to` pads by reflection;
`_PairDataset` holds ``set_epoch`` and ``__getitem__`` for subclasses that supply ``_pair``; `SPLITS` names the
splits.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mgid.errors import InputError

from .imageio import to_tensor

SPLITS = ("train", "val")


def _stable_id(name: str) -> int:
    """A stable 32-bit id for a name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))


def index_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` in ``epoch``: depends on nothing else (worker-safe)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


# --------------------------------------------------------------------------------------------------
# crop and flip shared by both frames of a pair


def _as_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(s) for s in size)  # type: ignore[assignment]
        if len(hw) != 2:
            raise InputError(f"crop size must be an int or (height, width), got {size!r}")
    if min(hw) < 1:
        raise InputError(f"crop size must be positive, got {size!r}")
    return hw  # type: ignore[return-value]


def pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad HxWxC ``img`` at the bottom/right by reflection so it is at least h x w.

    Reflection without repeating the edge (``reflect``) where the image is large enough, else with
    it (``symmetric``), which also works for 1-pixel images and for pads larger than the image.
    """
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if ph < img.shape[0] and pw < img.shape[1] else "symmetric"
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)


def crop_flip_pair(a: np.ndarray, b: np.ndarray, crop: tuple[int, int] | None, flip: bool,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cut the same random crop from two HxWx3 frames and flip both (or neither) horizontally.

    Frames smaller than the crop are padded by reflection first. ``crop=None`` keeps the full frame.
    Draws exactly three numbers from ``rng`` (y, x, flip) whatever the sizes, for reproducibility.
    """
    if a.shape != b.shape:
        raise InputError(f"the two frames of a pair differ in size: {a.shape} vs {b.shape}")
    ry, rx, rf = rng.random(3)
    if crop is not None:
        ch, cw = crop
        a, b = pad_to(a, ch, cw), pad_to(b, ch, cw)
        y = int(ry * (a.shape[0] - ch + 1))
        x = int(rx * (a.shape[1] - cw + 1))
        a, b = a[y:y + ch, x:x + cw], b[y:y + ch, x:x + cw]
    if flip and rf < 0.5:
        a, b = a[:, ::-1], b[:, ::-1]
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


class _PairDataset(Dataset):
    """Shared machinery: epoch-aware per-index RNG, crop/flip and the output dict."""

    def __init__(self, crop_size: int | Sequence[int] | None, seed: int, flip: bool) -> None:
        self.crop = _as_hw(crop_size)
        self.seed = int(seed)
        self.flip = bool(flip)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops/flips/partners ``__getitem__`` returns (reproducible)."""
        self.epoch = int(epoch)

    def _pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        """Two HxWx3 uint8 frames of one scene and the scene name (subclasses)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {n}")
        index %= n
        rng = index_rng(self.seed, self.epoch, index)
        a, b, scene = self._pair(index, rng)
        a, b = crop_flip_pair(a, b, self.crop, self.flip, rng)
        return {"frame1": to_tensor(a), "frame2": to_tensor(b), "scene": scene}


def _other_frame(i: int, n: int, rng: np.random.Generator) -> int:
    """A frame index uniform over range(n) without i (n >= 2)."""
    j = int(rng.integers(0, n - 1))
    return j + 1 if j >= i else j
