"""Real time-lapse data on disk: layout detection (`detect_layout`) and the `TimeLapseFolder` data set.

Three layouts are read: MGID side-by-side pair images (``"mgid"``), one folder per scene
(``"scenes"``, ``ROOT/<scene>/<frame>.png``) and flat ``<scene>_<frame>`` files (``"flat"``).
Image headers are validated at construction (frame counts, sizes, MGID widths) so bad data is
reported before training; pixels are decoded lazily and each index yields a pair of two frames of
one scene with the shared crop/flip of `mgid.data.pair_sampling`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from .imageio import IMAGE_SUFFIXES, PathLike, image_size, list_images, read_image
from .pair_sampling import _other_frame, _PairDataset

_SUFFIX_LIST = ", ".join(s[1:] for s in IMAGE_SUFFIXES)

Layout = Literal["mgid", "scenes", "flat"]
LAYOUTS = get_args(Layout)
#: In "auto" mode a flat folder whose first image is at least this much wider than tall is read as
#: MGID side-by-side pairs (their images are 512x256); a flat <scene>_<frame> set is read otherwise.
MGID_MIN_ASPECT = 1.5


def _scene_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def detect_layout(root: PathLike) -> str:
    """Guess the layout of a time-lapse folder: "scenes", "mgid" or "flat".

    Sub-folders holding images -> "scenes"; otherwise a flat folder whose first image is at least
    `MGID_MIN_ASPECT` times wider than tall -> "mgid"; otherwise "flat". Pass ``layout=`` to
    `TimeLapseFolder` where the guess is wrong (e.g. a flat set of panoramas).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"time-lapse data folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"time-lapse data path is not a folder: {root}")
    if any(list_images(d) for d in _scene_dirs(root)):
        return "scenes"
    files = list_images(root)
    if not files:
        hint = ""
        if (root / "train").is_dir():
            hint = f" (it has a train/ folder: point at {root / 'train'} or use make_dataset with a split)"
        raise ValueError(f"no images ({_SUFFIX_LIST}) found in {root} or its sub-folders{hint}; expected MGID "
                         f"pair images, scene folders ROOT/<scene>/<frame>.png, or flat <scene>_<frame>.jpg files")
    h, w = image_size(files[0])
    return "mgid" if w >= MGID_MIN_ASPECT * h else "flat"


class TimeLapseFolder(_PairDataset):
    """Real time-lapse frames from a folder, as pairs of two frames of one scene.

    Layouts (``layout="auto"`` detects them, see `detect_layout`):

    * ``"mgid"``: a flat folder of side-by-side pair images (the MGID set: 512x256 = two 256x256
      frames of one scene). Index i = image i; its left and right halves (in random order) form the
      pair. The width must be even.
    * ``"scenes"``: ``ROOT/<scene>/<frame>.(png|jpg|...)``, one folder per scene.
    * ``"flat"``: ``ROOT/<scene>_<frame>.jpg``; the scene is everything before the last underscore.

    For the last two, index i is one frame; its partner is a different random frame of the same
    scene. Files whose suffix is not an image suffix (``.txt``, ...) and hidden files are ignored.

    With ``validate=True`` (default) every image header is read at construction (cheap: no pixel
    decoding), so non-image files, frames of different sizes within a scene and odd MGID widths are
    reported before training starts; pixels are decoded lazily in ``__getitem__`` (a file corrupt
    past its header raises there, naming the file). Crops larger than a frame are padded by
    reflection.
    """

    def __init__(self, root: PathLike, crop_size: int | Sequence[int] | None = 256, *, layout: str = "auto",
                 seed: int = 0, flip: bool = True, validate: bool = True) -> None:
        super().__init__(crop_size, seed, flip)
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
