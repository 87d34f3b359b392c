"""Folders of clean photos as training backgrounds: found recursively, decoded lazily, cached within a bound.

`PhotoFolders` lists and checks the photos of one or more folders and decodes one when first used;
`heldout_photos` picks the held-out photos of each folder by the SHA-1 digests of their names, so the split
depends on the names alone. What is refused or skipped, and why: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from mgid.errors import InputError

from .image_header import read_header
from .imageio import IMAGE_SUFFIXES, PathLike, list_images, read_image

PhotoSplit = Literal["train", "heldout", "all"]
#: Files named in a skip warning before "and N more".
_NAMED_IN_WARNING = 3
_MB = 1 << 20


def _name_digest(path: Path) -> str:
    return hashlib.sha1(path.name.encode("utf-8")).hexdigest()


def heldout_photos(files: Sequence[Path], per_folder: int) -> frozenset[Path]:
    """The held-out photos among ``files``: in each parent folder, the ``per_folder`` files whose names have
    the smallest SHA-1 digests (ties, which need equal names, cannot happen within a folder).

    Args:
        files: the photo files.
        per_folder: held-out photos per parent folder (0: none).

    Returns:
        The held-out files.

    Raises:
        InputError: ``per_folder`` is negative (a ``ValueError``).
    """
    if per_folder < 0:
        raise InputError(f"per_folder must be >= 0, got {per_folder}")
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)
    held: set[Path] = set()
    for group in by_folder.values():
        held.update(sorted(group, key=_name_digest)[:per_folder])
    return frozenset(held)


def _summary(paths: Sequence[Path]) -> str:
    named = ", ".join(str(p) for p in paths[:_NAMED_IN_WARNING])
    more = len(paths) - _NAMED_IN_WARNING
    return named + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class PhotoEntry:
    """One usable photo: its file and its size in the file (height, width)."""

    path: Path
    height: int
    width: int


class PhotoFolders:
    """The usable clean photos of one or more folders, loaded lazily.

    Unreadable files and photos smaller than ``min_side`` are skipped, counted and named in one warning.

    Args:
        folders: the folders, each searched recursively.
        split: ``"train"`` (every photo but the held-out ones), ``"heldout"`` (only those) or ``"all"``.
        heldout_per_folder: held-out photos per folder that directly holds photos (`heldout_photos`).
        min_side: photos whose short side (after the ``max_side`` downscale) is below this are skipped.
        max_side: decoded photos are downscaled (area interpolation) so their long side is at most this.
        cache_mb: bound of the decoded-photo cache in megabytes (at least the largest photo is kept).

    Raises:
        FileNotFoundError, NotADirectoryError: a folder is missing or a file.
        InputError: no folder, bad sizes, a folder that holds no image, or no usable photo left in ``split``
            (a ``ValueError``).
    """

    def __init__(self, folders: Sequence[PathLike], *, split: PhotoSplit = "train", heldout_per_folder: int = 0,
                 min_side: int = 1, max_side: int = 1024, cache_mb: float = 512.0) -> None:
        if not folders:
            raise InputError("PhotoFolders needs at least one folder")
        if max_side < 1 or min_side < 1 or cache_mb <= 0:
            raise InputError(f"PhotoFolders: need max_side >= 1, min_side >= 1, cache_mb > 0; got {max_side}, "
                             f"{min_side}, {cache_mb}")
        self.folders = tuple(Path(f) for f in folders)
        self.max_side = int(max_side)
        files: list[Path] = []
        for folder in self.folders:
            found = list_images(folder, recursive=True)
            if not found:
                raise InputError(f"no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}) found in {folder} or its "
                                 f"sub-folders; give a folder of clean photos")
            files.extend(found)
        held = heldout_photos(files, heldout_per_folder)
        chosen = [f for f in files if split == "all" or (f in held) == (split == "heldout")]
        unreadable: list[Path] = []
        small: list[Path] = []
        entries: list[PhotoEntry] = []
        for f in chosen:
            try:
                header = read_header(f)
            except OSError:
                header = None
            if header is None or header.frames > 1:  # an animation is no still photo: read_image refuses it
                unreadable.append(f)
                continue
            scale = min(1.0, self.max_side / max(header.width, header.height))
            if min(header.width, header.height) * scale < min_side:
                small.append(f)
                continue
            entries.append(PhotoEntry(f, header.height, header.width))
        where = ", ".join(map(str, self.folders))
        if unreadable:
            warnings.warn(f"{len(unreadable)} of {len(chosen)} files in {where} are not readable still images and "
                          f"are skipped: {_summary(unreadable)}", stacklevel=2)
        if small:
            warnings.warn(f"{len(small)} of {len(chosen)} photos in {where} are smaller than {min_side} pixels on "
                          f"their short side (the crop) and are skipped: {_summary(small)}", stacklevel=2)
        if not entries:
            raise InputError(
                f"no usable {split} photos in {where}: {len(files)} image files, {len(held)} held out, "
                f"{len(unreadable)} unreadable, {len(small)} smaller than {min_side} pixels; add photos, "
                f"lower the held-out count or the crop size")
        self.split = split
        self.entries = tuple(entries)
        self.skipped_unreadable = len(unreadable)
        self.skipped_small = len(small)
        self.unreadable: set[Path] = set()
        self._cache: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = int(cache_mb * _MB)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        # DataLoader workers started by "spawn" receive a pickled copy: without the lock and the cache
        state = dict(self.__dict__, _lock=None, _cache=OrderedDict(), _cache_bytes=0)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def name(self, index: int) -> str:
        """A short name of photo ``index``: its parent folder and file name."""
        p = self.entries[index].path
        return f"{p.parent.name}/{p.name}"

    def _decode(self, path: Path) -> np.ndarray:
        img = read_image(path)
        h, w = img.shape[:2]
        scale = self.max_side / max(h, w)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        img.setflags(write=False)  # shared by the cache: callers must copy before writing
        return img

    def _cached(self, path: Path) -> np.ndarray:
        with self._lock:
            img = self._cache.get(path)
            if img is not None:
                self._cache.move_to_end(path)
                return img
        img = self._decode(path)
        with self._lock:
            if path not in self._cache:
                self._cache[path] = img
                self._cache_bytes += img.nbytes
                while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._cache_bytes -= old.nbytes
        return img

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """Photo ``index`` as HxWx3 uint8 RGB (read-only, long side <= max_side) and the index it came from.

        A photo that fails to decode is skipped (warned about once, counted in ``unreadable``) and the next
        usable one is returned, so the draw stays deterministic for the same files.

        Raises:
            InputError: no photo of the set can be decoded (a ``ValueError``).
        """
        n = len(self.entries)
        for k in range(n):
            i = (index + k) % n
            path = self.entries[i].path
            if path in self.unreadable:
                continue
            try:
                return self._cached(path), i
            except (ValueError, OSError) as exc:
                self.unreadable.add(path)
                warnings.warn(f"skipping a photo that cannot be decoded: {exc}", stacklevel=2)
        raise InputError(f"none of the {n} photos in {', '.join(map(str, self.folders))} can be decoded")
