"""Real time-lapse data on disk: layout detection (`detect_layout`) and the `TimeLapseFolder` data set.

Three layouts are read: MGID side-by-side pair images (``"mgid"``), one folder per scene (``"scenes"``,
``ROOT/<scene>/<frame>.png``) and flat ``<scene>_<frame>`` files (``"flat"``). A folder whose layout cannot be
told safely raises `AmbiguousLayoutError` rather than pair frames of different scenes.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from mgid.config.literals import check_choice
from mgid.errors import InputError, MgidError

from .imageio import IMAGE_SUFFIXES, PathLike, image_size, is_image_file, list_images, read_image
from .pair_sampling import _other_frame, _PairDataset

_SUFFIX_LIST = ", ".join(s[1:] for s in IMAGE_SUFFIXES)

Layout = Literal["mgid", "scenes", "flat"]
LAYOUTS = get_args(Layout)
#: In "auto" mode a flat folder whose first image is at least this much wider than tall is read as
#: MGID side-by-side pairs (their images are 512x256); a flat <scene>_<frame> set is read otherwise.
MGID_MIN_ASPECT = 1.5

#: How frames are cut from MGID side-by-side pair images (`TimeLapseFolder`, `TrainConfig.pair_preprocessing`):
#: "crop" (the shared random crop and flip of every layout, the halves in random order) or "official" (the public
#: code's loader: the image resized to `OFFICIAL_PAIR_HW`, left half frame 1, right half frame 2, no crop or flip).
PairPreprocessing = Literal["crop", "official"]
PAIR_PREPROCESSINGS = get_args(PairPreprocessing)
#: (H, W) the public MGID loader resizes each side-by-side pair image to (cv2.resize, bilinear): two 256x256 frames.
OFFICIAL_PAIR_HW = (256, 512)
#: How far `detect_layout` looks below a folder with no images in it nor in its sub-folders, to say where images
#: are: folder levels, and directory entries read in all (so a huge tree is not walked).
SEARCH_DEPTH = 3
SEARCH_ENTRIES = 20_000


class AmbiguousLayoutError(MgidError, ValueError):
    """A time-lapse folder whose layout `detect_layout` will not guess, because a wrong guess would pair frames of
    different scenes; the message (one line) says what was found and what to pass instead."""


def _scene_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_wide(path: Path) -> bool:
    """Whether image ``path`` looks like an MGID side-by-side pair (at least `MGID_MIN_ASPECT` wider than tall)."""
    h, w = image_size(path)
    return w >= MGID_MIN_ASPECT * h


def _looks_wide(path: Path) -> bool:
    """`_is_wide`, False for a file whose header cannot be read (for messages that only suggest)."""
    try:
        return _is_wide(path)
    except (OSError, ValueError):
        return False


def _listing(folder: Path, budget: list[int]) -> tuple[list[Path], list[Path]]:
    """(image files, visible sub-folders) of ``folder``, sorted; each entry read takes one from ``budget[0]``, and
    the listing stops when it is spent. A folder that cannot be read lists as empty."""
    images: list[Path] = []
    folders: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
                if entry.name.startswith("."):
                    continue
                try:
                    if entry.is_dir():
                        folders.append(Path(entry.path))
                    elif entry.is_file() and is_image_file(entry.name):
                        images.append(Path(entry.path))
                except OSError:
                    continue
    except OSError:
        pass
    return sorted(images), sorted(folders)


def _image_folders_below(root: Path) -> tuple[int, list[tuple[Path, list[Path]]], bool]:
    """The shallowest folders below ``root`` that hold images, at most `SEARCH_DEPTH` levels down and reading at
    most `SEARCH_ENTRIES` entries: (their depth, [(folder, its images)], whether the entry bound cut the search);
    (0, [], cut) when none were found."""
    budget = [SEARCH_ENTRIES]
    level = _listing(root, budget)[1]
    for depth in range(1, SEARCH_DEPTH + 1):
        found: list[tuple[Path, list[Path]]] = []
        below: list[Path] = []
        for folder in level:
            images, folders = _listing(folder, budget)
            if images:
                found.append((folder, images))
            below += folders
        if found or budget[0] <= 0:
            return (depth if found else 0), found, budget[0] <= 0
        level = below
    return 0, [], False


def _looks_flat(images: Sequence[Path]) -> bool:
    """Whether ``images`` are named ``<scene>_<frame>`` for two scenes or more (a flat set, not one scene)."""
    scenes = {p.stem.rpartition("_")[0] for p in images}
    return "" not in scenes and len(scenes) > 1


_LEVELS = {1: "one level", 2: "two levels", 3: "three levels"}


def _deeper_images_message(root: Path) -> str:
    """The error of `detect_layout` for a folder with no images in it nor in its sub-folders: where images were
    found further down (`_image_folders_below`) and the folder to pass for which layout, or that none were."""
    depth, found, cut = _image_folders_below(root)
    expected = ("expected MGID pair images, scene folders ROOT/<scene>/<frame>.png, or flat <scene>_<frame>.jpg "
                "files")
    if not found:
        bound = f" (the search stopped after {SEARCH_ENTRIES} entries)" if cut else ""
        return (f"no images ({_SUFFIX_LIST}) found in {root}, its sub-folders or below them, down to "
                f"{_LEVELS[SEARCH_DEPTH]}{bound}; {expected}")

    def in_train(paths: Sequence[Path]) -> Path:  # a data set written with splits: its train/ part
        return next((p for p in paths if "train" in p.relative_to(root).parts), paths[0])

    folders = [d for d, _ in found]
    count = sum(len(images) for _, images in found)
    example = found[0][1][0].relative_to(root)
    if _looks_wide(found[0][1][0]):
        target = in_train(folders)
        others = f"; {len(folders)} such folders" if len(folders) > 1 else ""
        what = f"side-by-side pair images in {target} (layout 'mgid'{others})"
    else:
        by_parent: dict[Path, list[Path]] = {}
        for d in folders:
            by_parent.setdefault(d.parent, []).append(d)
        parent = in_train(sorted(by_parent, key=lambda p: -len(by_parent[p])))
        lone = by_parent[parent][0]
        if len(by_parent[parent]) == 1 and _looks_flat(dict(found)[lone]):
            target, what = lone, f"flat <scene>_<frame> files in {lone} (layout 'flat')"
        else:
            target = parent
            what = f"{len(by_parent[parent])} scene folder(s) in {parent} (layout 'scenes': <scene>/<frame> files)"
    return (f"no images ({_SUFFIX_LIST}) in {root} or its sub-folders, but {count}{'+' if cut else ''} image(s) lie "
            f"deeper, e.g. {example}: images found {_LEVELS[depth]} down, {what}: pass --data {target}")


def detect_layout(root: PathLike) -> str:
    """Guess the layout of a time-lapse folder: ``"scenes"``, ``"mgid"`` or ``"flat"``.

    Pass ``layout=`` to `TimeLapseFolder` where the guess is wrong (e.g. a flat set of panoramas).

    Args:
        root: the data folder.

    Returns:
        ``"scenes"`` when sub-folders hold images; otherwise ``"mgid"`` when the first image is at least
        `MGID_MIN_ASPECT` times wider than tall; otherwise ``"flat"``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        AmbiguousLayoutError: a guess could pair frames of different scenes (the message names the counts, an
            example path and what to pass instead): images both at the top level and in sub-folders; a
            sub-folder that holds folders of images (scene folders one level too deep, or a scene folder with
            image sub-folders); sub-folders of side-by-side pair images (e.g. ``train/`` and ``test/`` of the
            MGID set, which would be read as two scenes).
        InputError: no images in ``root`` or its sub-folders (the message says where deeper images lie, if any).
        InputError: the header of an image whose width decides the layout cannot be read.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"time-lapse data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"time-lapse data path is not a folder: {root}")
    top = list_images(root)
    image_dirs: list[tuple[Path, list[Path]]] = []  # sub-folders holding images: the scene folders
    nested: list[tuple[Path, list[Path]]] = []  # sub-folders holding folders of images: not scene folders
    for d in _scene_dirs(root):
        frames = list_images(d)
        if frames:
            image_dirs.append((d, frames))
        inner = [e for e in _scene_dirs(d) if list_images(e)]
        if inner:
            nested.append((d, inner))
    if nested:
        # a data set written with splits (write_synthetic_dataset: train/, val/, paired/) points at train/
        parent, inner = next(((d, i) for d, i in nested if d.name == "train"), nested[0])
        first = list_images(inner[0])[0]
        example = first.relative_to(root)
        count = sum(len(i) for _, i in nested)
        if not image_dirs and _looks_wide(first):
            raise AmbiguousLayoutError(
                f"{root}: images found two levels down: {len(nested)} sub-folder(s) hold {count} folder(s) of "
                f"side-by-side pair images (e.g. {example}); pass one folder of pairs, e.g. --data {inner[0]} "
                f"(layout 'mgid')")
        also = (f"; or pass layout='scenes' to read only the {len(image_dirs)} sub-folder(s) with images of their "
                f"own, each as one scene" if image_dirs else "")
        raise AmbiguousLayoutError(
            f"{root}: images found two levels down: {len(nested)} sub-folder(s) hold {count} folder(s) of images "
            f"(e.g. {example}), so the scene folders are not directly in {root}; pass the folder that holds the "
            f"scene folders instead (e.g. {parent}){also}")
    if image_dirs and top:
        raise AmbiguousLayoutError(
            f"{root} holds both {len(top)} image(s) at its top level (e.g. {top[0].name}) and {len(image_dirs)} "
            f"sub-folder(s) of images (e.g. {image_dirs[0][1][0].relative_to(root)}); pass layout='scenes' to read "
            f"the sub-folders as scenes (the top-level images ignored) or layout='flat' / 'mgid' to read the "
            f"top-level images only (the sub-folders ignored), or move one of them elsewhere")
    if image_dirs:
        wide = [d for d, frames in image_dirs if _is_wide(frames[0])]
        if wide:
            example = next(f for d, f in image_dirs if d == wide[0])[0]
            h, w = image_size(example)
            raise AmbiguousLayoutError(
                f"{root}: {len(wide)} of its {len(image_dirs)} sub-folder(s) hold side-by-side pair images (e.g. "
                f"{example.relative_to(root)}, {h}x{w} HxW), which read as scene folders would pair frames of "
                f"different pair images; pass one folder of pairs instead (e.g. {wide[0]}, layout 'mgid'), or "
                f"layout='scenes' if each sub-folder is one scene of wide frames")
        return "scenes"
    if not top:
        if (root / "train").is_dir():
            raise InputError(f"no images ({_SUFFIX_LIST}) found in {root} or its sub-folders (it has a train/ "
                             f"folder: point at {root / 'train'} or use make_dataset with a split)")
        raise InputError(_deeper_images_message(root))
    return "mgid" if _is_wide(top[0]) else "flat"


class TimeLapseFolder(_PairDataset):
    """Real time-lapse frames from a folder, as pairs of two frames of one scene.

    Layouts (``layout="auto"`` detects them, see `detect_layout`):

    * ``"mgid"``: a flat folder of side-by-side pair images (the MGID set: 512x256 = two 256x256
      frames of one scene). Index i = image i. With ``pair_preprocessing="crop"`` (default) its left
      and right halves (in random order) form the pair, cut by the shared crop and flip; the width
      must be even. With ``"official"``, as the public code's loader: the image is resized to
      `OFFICIAL_PAIR_HW` (512x256, cv2 bilinear), the left half is frame 1 and the right half frame 2,
      with no crop and no flip (``flip`` is not used; ``crop_size`` must be None or 256, else InputError).
    * ``"scenes"``: ``ROOT/<scene>/<frame>.(png|jpg|...)``, one folder per scene.
    * ``"flat"``: ``ROOT/<scene>_<frame>.jpg``; the scene is everything before the last underscore.

    For the last two, index i is one frame; its partner is a different random frame of the same
    scene; ``pair_preprocessing`` applies to the MGID layout only, the others always crop. Files whose suffix
    is not an image suffix (``.txt``, ...) and hidden files are ignored.

    With ``validate=True`` (default) every image header is read at construction (no pixel
    decoding), so non-image files, frames of different sizes within a scene and odd MGID widths are
    reported before training starts; pixels are decoded lazily in ``__getitem__`` (a file corrupt
    past its header raises there, naming the file). Crops larger than a frame are padded by
    reflection (`mgid.data.pair_sampling.pad_to`); with ``validate=True`` such frames are counted, and
    ``crop_warning`` (else None) says how many and what the padding does, also issued as a ``UserWarning``.

    Item ``i`` is ``{"frame1", "frame2"}``: (3, h, w) float32 tensors in [-1, 1], and ``"scene"``: the scene's
    name (str); the crop, flip and partner are fixed by ``(seed, epoch, i)`` (``set_epoch``).

    Args:
        root: the data folder.
        crop_size: int or (h, w) random crop shared by the two frames of a pair; None: the full frames.
            Default 256.
        layout: ``"auto"`` (the default, `detect_layout`), ``"mgid"``, ``"scenes"`` or ``"flat"``.
        seed: fixes crops, flips and partners (with the epoch). Default 0.
        flip: random horizontal flip of each pair (not with ``"official"``). Default True.
        validate: read every image header at construction. Default True.
        pair_preprocessing: ``"crop"`` (the default) or ``"official"`` (MGID layout only; `PairPreprocessing`).

    Attributes:
        root: the data folder, as a `Path`.
        layout: the layout read (``"auto"`` resolved).
        scenes: (scene name, its frame files) per scene; in the MGID layout one pair image per scene.
        items: (scene index, frame index) of each item.
        official: whether pairs are cut as the public code's loader cuts them.
        validate: as given.
        crop_warning: set by the header validation when frames are smaller than the crop: how many, and what
            the padding does; else None.

    Raises:
        FileNotFoundError: ``root`` does not exist, or (with ``validate``) an image vanished.
        NotADirectoryError: ``root`` is a file.
        AmbiguousLayoutError: ``layout="auto"`` and the layout cannot be told safely (`detect_layout`).
        InputError: an unknown ``layout``, a bad ``crop_size`` (or one other than 256
            with ``"official"``), no images at all (auto layout), a flat file not named ``<scene>_<frame>``, a
            scene with one frame, or (with ``validate``) frames of one scene of different sizes or an odd MGID
            width.
        InputError: an unknown ``pair_preprocessing``, no images for the given layout, or (with ``validate``) a
            file whose header is not an image's.
    """

    #: Set by the header validation when frames are smaller than the crop: how many, and what the padding does.
    crop_warning: str | None = None

    def __init__(self, root: PathLike, crop_size: int | Sequence[int] | None = 256, *, layout: str = "auto",
                 seed: int = 0, flip: bool = True, validate: bool = True,
                 pair_preprocessing: PairPreprocessing = "crop") -> None:
        super().__init__(crop_size, seed, flip)
        check_choice(pair_preprocessing, PAIR_PREPROCESSINGS, "pair_preprocessing")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"time-lapse data folder not found: {self.root}; check the path "
                                    f"(or leave the data path unset to use the embedded synthetic set)")
        if not self.root.is_dir():
            raise NotADirectoryError(f"time-lapse data path is not a folder: {self.root}")
        if layout == "auto":
            layout = detect_layout(self.root)
        if layout not in LAYOUTS:
            raise InputError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.validate = bool(validate)
        self.official = layout == "mgid" and pair_preprocessing == "official"
        if self.official:
            frame = (OFFICIAL_PAIR_HW[0], OFFICIAL_PAIR_HW[1] // 2)
            if self.crop not in (None, frame):
                raise InputError(f"pair_preprocessing 'official' gives {frame[0]}x{frame[1]} frames with no crop, so "
                                 f"crop size {self.crop} cannot apply; use crop size {frame[0]} or "
                                 f"pair_preprocessing 'crop'")
            # the shared crop/flip step then keeps the resized frames as they are
            self.crop, self.flip = None, False
        # scenes: (name, frame files); for "mgid" every image is a scene with one (double) file
        self.scenes: list[tuple[str, list[Path]]] = []
        if layout == "mgid":
            self._collect_mgid()
        elif layout == "scenes":
            self._collect_scene_dirs()
        else:
            self._collect_flat()
        # items: (scene index, frame index)
        if layout == "mgid":
            self.items = [(k, 0) for k in range(len(self.scenes))]
        else:
            self.items = [(k, f) for k, (_, frames) in enumerate(self.scenes) for f in range(len(frames))]
        if validate:
            self._validate()

    # ---- discovery
    def _no_images(self) -> InputError:
        return InputError(f"no images found in {self.root} for layout {self.layout!r}; put the frames there "
                          f"(suffixes {_SUFFIX_LIST})")

    def _collect_mgid(self) -> None:
        files = list_images(self.root)
        if not files:
            raise self._no_images()
        self.scenes = [(p.stem, [p]) for p in files]

    def _collect_scene_dirs(self) -> None:
        loose = list_images(self.root)
        if loose:
            warnings.warn(f"{self.root}: {len(loose)} image(s) directly in the root are ignored in the "
                          f"scene-folder layout (e.g. {loose[0].name})", stacklevel=3)
        for d in _scene_dirs(self.root):
            frames = list_images(d)
            if frames:
                self.scenes.append((d.name, frames))
        if not self.scenes:
            raise self._no_images()
        self._check_frame_counts("scene folder")

    def _collect_flat(self) -> None:
        groups: dict[str, list[Path]] = {}
        files = list_images(self.root)
        if not files:
            raise self._no_images()
        for p in files:
            scene, sep, frame = p.stem.rpartition("_")
            if not sep or not scene or not frame:
                raise InputError(f"{p}: cannot tell its scene; flat layout files must be named "
                                 f"<scene>_<frame>{p.suffix} (or use scene folders ROOT/<scene>/<frame>{p.suffix})")
            groups.setdefault(scene, []).append(p)
        self.scenes = sorted(groups.items())
        self._check_frame_counts("scene")

    def _check_frame_counts(self, what: str) -> None:
        for name, frames in self.scenes:
            if len(frames) < 2:
                raise InputError(f"{what} {name!r} in {self.root} has only one frame ({frames[0].name}); a "
                                 f"pair needs two frames of one scene: add frames or remove the scene")

    # ---- validation
    def _validate(self) -> None:
        small: list[tuple[Path, tuple[int, int], int]] = []  # (file, its frames' size, frames) smaller than the crop
        for name, frames in self.scenes:
            sizes = {p: image_size(p) for p in frames}  # raises naming the file if not an image
            if self.layout == "mgid":
                if not self.official:  # the official loader resizes first, so any width splits
                    self._check_mgid_width(frames[0], sizes[frames[0]])
                    h, w = sizes[frames[0]]
                    if self._smaller_than_crop(h, w // 2):
                        small.append((frames[0], (h, w // 2), 2))  # both halves
                continue
            distinct = sorted(set(sizes.values()))
            if len(distinct) > 1:
                by_size = {s: [p.name for p, t in sizes.items() if t == s] for s in distinct}
                desc = "; ".join(f"{h}x{w} (HxW): {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}"
                                 for (h, w), n in by_size.items())
                raise InputError(f"frames of scene {name!r} in {self.root} differ in size: {desc}; all frames "
                                 f"of a scene must have one size (resize or crop them alike)")
            small += [(p, hw, 1) for p, hw in sizes.items() if self._smaller_than_crop(*hw)]
        if small:
            self.crop_warning = self._crop_note(small)
            warnings.warn(self.crop_warning, stacklevel=3)

    def _smaller_than_crop(self, h: int, w: int) -> bool:
        return self.crop is not None and (h < self.crop[0] or w < self.crop[1])

    def _crop_note(self, small: list[tuple[Path, tuple[int, int], int]]) -> str:
        """The warning of `_validate` when the frames of ``small`` (file, frame size, frames) are smaller than
        the crop."""
        ch, cw = self.crop
        total = sum(2 if self.layout == "mgid" else len(frames) for _, frames in self.scenes)
        path, (h, w), _ = small[0]
        mirrored = 1.0 - min(h, ch) * min(w, cw) / (ch * cw)
        half = ", the half of a side-by-side pair" if self.layout == "mgid" else ""
        if ch == cw:
            fits = min(min(hw) for _, hw, _ in small)
            hint = f"lower the crop size to {fits} or less (the smallest side of those frames), or use larger frames"
        else:
            fits_h, fits_w = min(hw[0] for _, hw, _ in small), min(hw[1] for _, hw, _ in small)
            hint = f"use a crop of at most {fits_h}x{fits_w} (HxW), or larger frames"
        return (f"{sum(n for *_, n in small)} of the {total} frames in {self.root} are smaller than the {ch}x{cw} "
                f"(HxW) crop (e.g. {path.relative_to(self.root)}: {h}x{w}{half}): they are padded to {ch}x{cw} by "
                f"mirroring them at the bottom and right edges, so {mirrored:.0%} of such a crop is a mirrored copy; "
                f"{hint}")

    @staticmethod
    def _check_mgid_width(path: Path, hw: tuple[int, int]) -> None:
        if hw[1] % 2:
            raise InputError(f"{path}: width {hw[1]} is odd, so it cannot be split into two side-by-side "
                             f"frames (MGID layout expects e.g. 512x256 = two 256x256 frames)")

    # ---- access
    def __len__(self) -> int:
        return len(self.items)

    def _pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        k, i = self.items[index]
        name, frames = self.scenes[k]
        if self.official:
            h, w = OFFICIAL_PAIR_HW
            img = cv2.resize(read_image(frames[0]), (w, h), interpolation=cv2.INTER_LINEAR)
            return img[:, :w // 2], img[:, w // 2:], name  # left frame 1, right frame 2, always
        if self.layout == "mgid":
            img = read_image(frames[0])
            self._check_mgid_width(frames[0], img.shape[:2])
            half = img.shape[1] // 2
            a, b = img[:, :half], img[:, half:]
            if rng.random() < 0.5:  # either frame may come first; the loss is symmetric anyway
                a, b = b, a
            return a, b, name
        j = _other_frame(i, len(frames), rng)
        a, b = read_image(frames[i]), read_image(frames[j])
        if a.shape != b.shape:
            raise InputError(f"frames of scene {name!r} differ in size: {frames[i].name} is "
                             f"{a.shape[0]}x{a.shape[1]}, {frames[j].name} is {b.shape[0]}x{b.shape[1]} (HxW)")
        return a, b, name
