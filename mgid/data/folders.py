"""Real time-lapse data on disk: layout detection (`detect_layout`) and the `TimeLapseFolder` data set.

Three layouts are read: MGID side-by-side pair images (``"mgid"``), one folder per scene
(``"scenes"``, ``ROOT/<scene>/<frame>.png``) and flat ``<scene>_<frame>`` files (``"flat"``).
A folder whose layout cannot be told safely (images at two depths, image folders inside the
sub-folders, side-by-side pairs in sub-folders) is refused by `detect_layout` with an
`AmbiguousLayoutError` rather than read in a way that pairs frames of different scenes.
Image headers are validated at construction (frame counts, sizes, MGID widths) so bad data is
reported before training; pixels are decoded lazily and each index yields a pair of two frames of
one scene with the shared crop/flip of `mgid.data.pair_sampling`, or, for MGID pairs with
``pair_preprocessing="official"``, as the public code's loader cuts them.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from mgid.config.literals import check_choice

from .imageio import IMAGE_SUFFIXES, PathLike, image_size, list_images, read_image
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


class AmbiguousLayoutError(ValueError):
    """A time-lapse folder whose layout `detect_layout` will not guess, because a wrong guess would pair frames of
    different scenes; the message (one line) says what was found and what to pass instead."""


def _scene_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_wide(path: Path) -> bool:
    """Whether image ``path`` looks like an MGID side-by-side pair (at least `MGID_MIN_ASPECT` wider than tall)."""
    h, w = image_size(path)
    return w >= MGID_MIN_ASPECT * h


def detect_layout(root: PathLike) -> str:
    """Guess the layout of a time-lapse folder: "scenes", "mgid" or "flat".

    Sub-folders holding images -> "scenes"; otherwise a flat folder whose first image is at least
    `MGID_MIN_ASPECT` times wider than tall -> "mgid"; otherwise "flat". Pass ``layout=`` to
    `TimeLapseFolder` where the guess is wrong (e.g. a flat set of panoramas).

    Raises `AmbiguousLayoutError` (naming the counts, an example path and what to pass instead) where a guess could
    pair frames of different scenes: images both at the top level and in sub-folders; a sub-folder that holds
    folders of images (scene folders one level too deep, or a scene folder with image sub-folders); sub-folders of
    side-by-side pair images (e.g. ``train/`` and ``test/`` of the MGID set, which would be read as two scenes).
    ``FileNotFoundError`` / ``NotADirectoryError`` for a missing path or a file, ValueError when there are no images.
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
        example = list_images(inner[0])[0].relative_to(root)
        count = sum(len(i) for _, i in nested)
        also = (f"; or pass layout='scenes' to read only the {len(image_dirs)} sub-folder(s) with images of their "
                f"own, each as one scene" if image_dirs else "")
        raise AmbiguousLayoutError(
            f"{root}: {len(nested)} sub-folder(s) hold {count} folder(s) of images (e.g. {example}), so the scene "
            f"folders are not directly in {root}; pass the folder that holds the scene folders instead "
            f"(e.g. {parent}){also}")
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
        hint = ""
        if (root / "train").is_dir():
            hint = f" (it has a train/ folder: point at {root / 'train'} or use make_dataset with a split)"
        else:
            deeper = list_images(root, recursive=True)
            if deeper:
                hint = (f" ({len(deeper)} image(s) lie deeper, e.g. {deeper[0].relative_to(root)}: pass the folder "
                        f"that holds the scene folders or the images)")
        raise ValueError(f"no images ({_SUFFIX_LIST}) found in {root} or its sub-folders{hint}; expected MGID "
                         f"pair images, scene folders ROOT/<scene>/<frame>.png, or flat <scene>_<frame>.jpg files")
    return "mgid" if _is_wide(top[0]) else "flat"


class TimeLapseFolder(_PairDataset):
    """Real time-lapse frames from a folder, as pairs of two frames of one scene.

    Layouts (``layout="auto"`` detects them, see `detect_layout`):

    * ``"mgid"``: a flat folder of side-by-side pair images (the MGID set: 512x256 = two 256x256
      frames of one scene). Index i = image i. With ``pair_preprocessing="crop"`` (default) its left
      and right halves (in random order) form the pair, cut by the shared crop and flip; the width
      must be even. With ``"official"``, as the public code's loader: the image is resized to
      `OFFICIAL_PAIR_HW` (512x256, cv2 bilinear), the left half is frame 1 and the right half frame 2,
      with no crop and no flip (``flip`` is not used; ``crop_size`` must be None or 256, else ValueError).
    * ``"scenes"``: ``ROOT/<scene>/<frame>.(png|jpg|...)``, one folder per scene.
    * ``"flat"``: ``ROOT/<scene>_<frame>.jpg``; the scene is everything before the last underscore.

    For the last two, index i is one frame; its partner is a different random frame of the same
    scene; ``pair_preprocessing`` applies to the MGID layout only, the others always crop. Files whose suffix is not an image suffix (``.txt``, ...) and hidden files are ignored.

    With ``validate=True`` (default) every image header is read at construction (cheap: no pixel
    decoding), so non-image files, frames of different sizes within a scene and odd MGID widths are
    reported before training starts; pixels are decoded lazily in ``__getitem__`` (a file corrupt
    past its header raises there, naming the file). Crops larger than a frame are padded by
    reflection.
    """

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
            raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.validate = bool(validate)
        self.official = layout == "mgid" and pair_preprocessing == "official"
        if self.official:
            frame = (OFFICIAL_PAIR_HW[0], OFFICIAL_PAIR_HW[1] // 2)
            if self.crop not in (None, frame):
                raise ValueError(f"pair_preprocessing 'official' gives {frame[0]}x{frame[1]} frames with no crop, so "
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
    def _no_images(self) -> ValueError:
        return ValueError(f"no images found in {self.root} for layout {self.layout!r}; put the frames there "
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
                raise ValueError(f"{p}: cannot tell its scene; flat layout files must be named "
                                 f"<scene>_<frame>{p.suffix} (or use scene folders ROOT/<scene>/<frame>{p.suffix})")
            groups.setdefault(scene, []).append(p)
        self.scenes = sorted(groups.items())
        self._check_frame_counts("scene")

    def _check_frame_counts(self, what: str) -> None:
        for name, frames in self.scenes:
            if len(frames) < 2:
                raise ValueError(f"{what} {name!r} in {self.root} has only one frame ({frames[0].name}); a "
                                 f"pair needs two frames of one scene: add frames or remove the scene")

    # ---- validation
    def _validate(self) -> None:
        for name, frames in self.scenes:
            sizes = {p: image_size(p) for p in frames}  # raises naming the file if not an image
            if self.layout == "mgid":
                if not self.official:  # the official loader resizes first, so any width splits
                    self._check_mgid_width(frames[0], sizes[frames[0]])
                continue
            distinct = sorted(set(sizes.values()))
            if len(distinct) > 1:
                by_size = {s: [p.name for p, t in sizes.items() if t == s] for s in distinct}
                desc = "; ".join(f"{h}x{w} (HxW): {', '.join(n[:3])}{' ...' if len(n) > 3 else ''}"
                                 for (h, w), n in by_size.items())
                raise ValueError(f"frames of scene {name!r} in {self.root} differ in size: {desc}; all frames "
                                 f"of a scene must have one size (resize or crop them alike)")

    @staticmethod
    def _check_mgid_width(path: Path, hw: tuple[int, int]) -> None:
        if hw[1] % 2:
            raise ValueError(f"{path}: width {hw[1]} is odd, so it cannot be split into two side-by-side "
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
            raise ValueError(f"frames of scene {name!r} differ in size: {frames[i].name} is "
                             f"{a.shape[0]}x{a.shape[1]}, {frames[j].name} is {b.shape[0]}x{b.shape[1]} (HxW)")
        return a, b, name
