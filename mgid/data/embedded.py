"""The embedded time-lapse default (no download): its config, the photo split and the fixed-scene data set.

`EmbeddedDataConfig` holds every setting of the embedded synthetic data; `split_photos` splits the bundled photos
into disjoint train/val sets; `EmbeddedTimeLapse` cuts fixed scenes (`SceneSpec`) from the photos and renders each
frame's rain lazily from a seed-fixed random stream (shared with `mgid.data.stream` and the held-out sets).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np

from mgid.config.literals import check_literals
from mgid.errors import InputError

from .pair_sampling import SPLITS, _other_frame, _PairDataset, _stable_id
from .photo_folders import PhotoFolders, PhotoSplit
from .photos import PHOTO_FILES, PHOTO_GROUPS, list_photos, load_photo
from .procedural import DeadLeavesConfig
from .synthetic_rain import RainConfig, add_rain

#: How the embedded default makes training pairs: "stream" renders every pair afresh
#: (`mgid.data.stream.StreamingTimeLapse`), "scenes" cuts a fixed set of scenes (`EmbeddedTimeLapse`).
EmbeddedMode = Literal["stream", "scenes"]
EMBEDDED_MODES = get_args(EmbeddedMode)
# Separate random streams per use, so e.g. the paired set never repeats a val frame's rain.
_STREAM_IDS = {"train": 1, "val": 2, "paired": 3}
_FRAME_STREAM = 11  # rain of one frame
_SCENE_STREAM = 12  # geometry of one scene
#: Share of stream backgrounds drawn from the photo folders (split equally) when photo_folder_shares is empty.
DEFAULT_FOLDER_SHARE = 0.75


@dataclass(frozen=True)
class EmbeddedDataConfig:
    """The embedded time-lapse data set (no download): bundled photos and procedural scenes, synthetic rain.

    The held-out split uses *disjoint photos* (``val_photos``; photos of one scene, like the two
    motorcycle views, always go to the same side), so no validation scene overlaps a training crop.
    The held-out paired sets (`EmbeddedPairedSet`) use fixed rain settings of their own
    (`HELDOUT_RAIN`), not ``rain``, so their numbers compare across training recipes.
    """

    mode: EmbeddedMode = "stream"
    """Training pairs: "stream" (a new background and two new rain frames for every sample, never
    repeating) or "scenes" (a fixed set of scenes cut from the photos, frames_per_scene frames each)."""
    pairs_per_epoch: int = 2000
    """stream mode: samples per epoch (an epoch only marks when validation runs and the seed moves on)."""
    procedural_probability: float = 0.35
    """stream mode: share of backgrounds that are procedural dead-leaves scenes instead of photo regions."""
    zoom_range: tuple[float, float] = (0.3, 1.5)
    """stream mode: photo zoom (output pixels per photo pixel), drawn log-uniformly; < 1 shrinks the photo."""
    rotate90: bool = True
    """stream mode: turn photo regions by a random multiple of 90 degrees."""
    colour_jitter: float = 0.15
    """stream mode: strength of the per-channel gain, saturation and contrast jitter of photo regions."""
    dead_leaves: DeadLeavesConfig = field(default_factory=DeadLeavesConfig)
    """stream mode: the procedural scenes' settings."""
    heldout_seed: int = 0
    """Seed of the held-out paired sets (fixed, independent of the training seed)."""

    size: int = 256
    """Side of each (square) scene in pixels; training crops are cut from it."""
    frames_per_scene: int = 8
    """Rainy frames generated per scene (>= 2)."""
    train_scenes_per_photo: int = 8
    """Scenes (crop position, zoom, flip) cut from each training photo."""
    val_scenes_per_photo: int = 4
    """Scenes cut from each held-out photo."""
    val_photos: tuple[str, ...] = ("coffee", "grass")
    """Photos reserved for the held-out split and the paired evaluation set (one colour, one grey)."""
    scale_range: tuple[float, float] = (0.5, 1.0)
    """Zoom applied to the photo before cropping (raised where needed so a crop fits)."""
    flip_scenes: bool = True
    """Mirror half of the scenes horizontally (more variety from few photos)."""
    paired_count: int = 24
    """Images in each held-out paired (rainy, clean) evaluation set."""
    paired_size: int = 128
    """Side of the held-out paired images."""
    rain: RainConfig = field(default_factory=RainConfig)
    """The rain renderer's settings."""
    photo_folders: tuple[str, ...] = ()
    """Folders of clean photos used as backgrounds beside the bundled photos and the procedural scenes, each
    searched recursively (JPEG, PNG, WebP, TIFF, BMP; 8 or 16 bit, grey or colour; `mgid.data.photo_folders`).
    Their held-out photos (photo_heldout_per_folder) are never trained on."""
    photo_folder_shares: tuple[float, ...] = ()
    """stream mode: share of all backgrounds drawn from each photo folder, one per folder (sum <= 1); the rest
    are drawn as without folders (procedural_probability of them procedural, the others bundled photos).
    Empty: the folders share DEFAULT_FOLDER_SHARE of the backgrounds equally. Scene mode cuts
    train_scenes_per_photo scenes from every photo instead."""
    photo_heldout_per_folder: int = 10
    """Photos held out of training in every folder that directly holds photos: those whose file names have the
    smallest SHA-1 digests (a rule on names alone, fixed before training); the held-out photo sets are made from
    them. 0 trains on every photo."""
    photo_max_side: int = 1024
    """Folder photos are downscaled on decoding so that their long side is at most this many pixels."""
    photo_cache_mb: float = 512.0
    """Bound of the decoded folder-photo cache in megabytes (per data-loading process)."""

    def __post_init__(self) -> None:
        check_literals(self)  # mode: from its Literal type
        if self.size < 8:
            raise InputError(f"EmbeddedDataConfig.size must be >= 8, got {self.size}")
        if self.frames_per_scene < 2:
            raise InputError(f"EmbeddedDataConfig.frames_per_scene must be >= 2 (pairs), got {self.frames_per_scene}")
        if self.train_scenes_per_photo < 1 or self.val_scenes_per_photo < 1:
            raise InputError("EmbeddedDataConfig: scenes per photo must be >= 1")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise InputError(f"EmbeddedDataConfig.scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.pairs_per_epoch < 1:
            raise InputError(f"EmbeddedDataConfig.pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        if not 0.0 <= self.procedural_probability <= 1.0:
            raise InputError("EmbeddedDataConfig.procedural_probability must lie in [0, 1], got "
                             f"{self.procedural_probability}")
        zlo, zhi = self.zoom_range
        if not 0 < zlo <= zhi:
            raise InputError(f"EmbeddedDataConfig.zoom_range must satisfy 0 < low <= high, got {self.zoom_range}")
        if not 0.0 <= self.colour_jitter < 0.5:
            raise InputError(f"EmbeddedDataConfig.colour_jitter must lie in [0, 0.5), got {self.colour_jitter}")
        shares = self.photo_folder_shares
        if shares and len(shares) != len(self.photo_folders):
            raise InputError(f"EmbeddedDataConfig.photo_folder_shares needs one share per photo folder: "
                             f"{len(shares)} shares for {len(self.photo_folders)} folders")
        if any(s < 0 for s in shares) or sum(shares) > 1.0 + 1e-9:
            raise InputError(f"EmbeddedDataConfig.photo_folder_shares must be >= 0 and sum to at most 1, got {shares}")
        if self.photo_heldout_per_folder < 0 or self.photo_max_side < 8 or self.photo_cache_mb <= 0:
            raise InputError("EmbeddedDataConfig: need photo_heldout_per_folder >= 0, photo_max_side >= 8 and "
                             f"photo_cache_mb > 0, got {self.photo_heldout_per_folder}, {self.photo_max_side}, "
                             f"{self.photo_cache_mb}")

    def folder_shares(self) -> tuple[float, ...]:
        """Give the share of stream backgrounds drawn from each photo folder.

        Returns:
            One share per entry of ``photo_folders``: ``photo_folder_shares`` as floats when given, else
            `DEFAULT_FOLDER_SHARE` split equally among the folders (empty without folders).
        """
        if self.photo_folder_shares or not self.photo_folders:
            return tuple(float(s) for s in self.photo_folder_shares)
        return (DEFAULT_FOLDER_SHARE / len(self.photo_folders),) * len(self.photo_folders)

    def photo_sets(self, split: PhotoSplit, min_side: int = 1,
                   folders: Sequence[str | Path] | None = None) -> tuple[PhotoFolders, ...]:
        """Open the photo folders as `PhotoFolders`, one per folder, with this config's bounds.

        Args:
            split: ``"train"`` (without the held-out photos) or ``"heldout"`` (only those).
            min_side: photos with a short side below this many pixels are skipped. Default 1.
            folders: the folders (None, the default: ``photo_folders``).

        Returns:
            One `PhotoFolders` per folder (``photo_max_side``, ``photo_heldout_per_folder``, the
            ``photo_cache_mb`` cache shared equally among them); none for ``"heldout"`` when
            ``photo_heldout_per_folder`` is 0.

        Raises:
            FileNotFoundError: a folder is missing.
            NotADirectoryError: a folder is a file.
            InputError: a folder holds no image, or no usable photo is left in ``split``.
        """
        folders = self.photo_folders if folders is None else tuple(folders)
        if split == "heldout" and self.photo_heldout_per_folder == 0:
            return ()
        return tuple(PhotoFolders([folder], split=split, heldout_per_folder=self.photo_heldout_per_folder,
                                  min_side=min_side, max_side=self.photo_max_side,
                                  cache_mb=self.photo_cache_mb / max(len(folders), 1))
                     for folder in folders)


def split_photos(config: EmbeddedDataConfig) -> dict[str, tuple[str, ...]]:
    """Split the bundled photos into disjoint training and held-out sets.

    Photos of one group (`PHOTO_GROUPS`, e.g. the two motorcycle views) go to the same side.

    Args:
        config: the embedded data settings; its ``val_photos`` (and their groups) form the ``"val"`` split.

    Returns:
        ``{"train": (...), "val": (...)}``: bundled photo names per split, disjoint.

    Raises:
        FileNotFoundError: no bundled photos are available (scikit-image missing).
        InputError: ``val_photos`` names a photo that is not available, or leaves a split empty.
    """
    available = list_photos()
    if not available:
        raise FileNotFoundError("no bundled photos found: is scikit-image installed?")
    unknown = [p for p in config.val_photos if p not in available]
    if unknown:
        raise InputError(f"EmbeddedDataConfig.val_photos names photos that are not available: {unknown}; "
                         f"available: {', '.join(available)}")
    val_groups = {PHOTO_GROUPS.get(p, p) for p in config.val_photos}
    val = tuple(p for p in available if PHOTO_GROUPS.get(p, p) in val_groups)
    train = tuple(p for p in available if p not in val)
    if not train or not val:
        raise InputError("EmbeddedDataConfig.val_photos must leave at least one photo for each split")
    return {"train": train, "val": val}


@dataclass(frozen=True)
class SceneSpec:
    """Where a scene comes from: a square region (top, left, side) of a photo, resized and maybe flipped.

    Attributes:
        name: the scene's name, ``<photo label>-<k>`` (its folder name when written to disk).
        photo: a bundled photo's name or a folder photo's path.
        top: top row of the region in the photo, in pixels.
        left: left column of the region, in pixels.
        side: side of the (square) region, in photo pixels.
        flip: whether the scene is mirrored horizontally.
    """

    name: str
    photo: str
    top: int
    left: int
    side: int
    flip: bool


def _scene_label(photo: str) -> str:
    """A file-name-safe label of a photo: a bundled photo's name, or a folder photo's ``<parent>_<stem>``."""
    if photo in PHOTO_FILES:
        return photo
    path = Path(photo)
    return f"{path.parent.name}_{path.stem}"


#: Reads a photo by the name a `SceneSpec` holds: HxWx3 uint8 RGB.
PhotoLoader = Callable[[str], np.ndarray]


def _make_scenes(photos: Sequence[str], per_photo: int, size: int, config: EmbeddedDataConfig,
                 seed: int, stream: str, loader: PhotoLoader = load_photo) -> list[SceneSpec]:
    scenes = []
    for photo in photos:
        ph, pw = loader(photo).shape[:2]
        short = min(ph, pw)
        for s in range(per_photo):
            rng = np.random.default_rng([seed & 0xFFFFFFFF, _STREAM_IDS[stream], _SCENE_STREAM, _stable_id(photo), s])
            # zoom < 1 shrinks the photo: a region of side size/zoom becomes the size x size scene
            zoom = max(rng.uniform(*config.scale_range), size / short)
            side = min(short, max(1, int(round(size / zoom))))
            top = int(rng.integers(0, ph - side + 1))
            left = int(rng.integers(0, pw - side + 1))
            flip = bool(config.flip_scenes and rng.random() < 0.5)
            scenes.append(SceneSpec(f"{_scene_label(photo)}-{s:03d}", photo, top, left, side, flip))
    return scenes


def _scene_background(spec: SceneSpec, size: int, loader: PhotoLoader = load_photo) -> np.ndarray:
    """The clean scene: size x size x 3 uint8 RGB."""
    region = loader(spec.photo)[spec.top:spec.top + spec.side, spec.left:spec.left + spec.side]
    interp = cv2.INTER_AREA if spec.side > size else cv2.INTER_CUBIC
    img = cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=interp)
    return np.ascontiguousarray(img[:, ::-1]) if spec.flip else img


def folder_photo_loader(sets: Sequence[PhotoFolders]) -> tuple[tuple[str, ...], PhotoLoader]:
    """Make the photos of ``sets`` usable as scene photos.

    Args:
        sets: the opened photo folders.

    Returns:
        (the photos' names: their paths as strings, a `PhotoLoader` that reads those and falls back to the
        bundled photos (`load_photo`) for any other name).
    """
    where = {str(entry.path): (pf, i) for pf in sets for i, entry in enumerate(pf.entries)}

    def load(name: str) -> np.ndarray:
        found = where.get(name)
        return load_photo(name) if found is None else found[0].load(found[1])[0]
    return tuple(where), load


def _float01(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) * np.float32(1.0 / 255.0)


def _uint8(img01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img01 * 255.0), 0, 255).astype(np.uint8)


class EmbeddedTimeLapse(_PairDataset):
    """Time-lapse scenes generated from bundled photos with per-frame synthetic rain.

    Each scene is a square crop (random zoom and position, maybe mirrored) of one photo at
    ``size`` x ``size``; its ``frames_per_scene`` frames are the scene with different rain and a mild
    illumination change. Scene geometry and every frame's rain are fixed by ``seed`` (frames are
    rendered lazily, a few ms each, as uint8 exactly as `write_synthetic_dataset` stores them); the
    backgrounds are cached in memory (size^2 * 3 bytes per scene).

    Index ``i`` is frame ``i % frames_per_scene`` of scene ``i // frames_per_scene``, paired with a
    different random frame of the same scene; both get the same random crop (``crop_size``, default
    the full scene) and flip. Returns ``{"frame1", "frame2"}`` (3, h, w) float in [-1, 1] and
    ``"scene"`` (str).

    Args:
        split: ``"train"`` (the default) or ``"val"`` (disjoint photos, see `EmbeddedDataConfig`); ``"val"``
            uses the held-out photos of the photo folders.
        config: the data settings (None, the default: ``EmbeddedDataConfig()``); ``frames_per_scene``, ``size``
            and ``scenes_per_photo`` override it.
        crop_size: int or (h, w) random crop of each pair; None (the default) = the full scene.
        seed: fixes scenes, rain and (with the epoch) the crops. Default 0.
        flip: random horizontal flip of each pair. Default True.
        frames_per_scene: overrides ``config.frames_per_scene`` (None: keep it).
        size: overrides ``config.size`` (None: keep it).
        scenes_per_photo: overrides ``config.train_scenes_per_photo`` or ``config.val_scenes_per_photo``, by
            ``split`` (None: keep it).

    Attributes:
        config: the settings with the overrides applied.
        split: as given.
        photos: the photos scenes are cut from: bundled names, then folder photo paths.
        scenes: the `SceneSpec` of every scene.

    Raises:
        InputError: an unknown ``split``, an override out of range (`EmbeddedDataConfig`), a bad ``crop_size`` or
            one larger than the scene, bad ``val_photos``, or a photo folder without usable photos.
        FileNotFoundError: no bundled photos are available, or a photo folder is missing.
        NotADirectoryError: a photo folder is a file.
    """

    def __init__(self, split: str = "train", *, config: EmbeddedDataConfig | None = None,
                 crop_size: int | Sequence[int] | None = None, seed: int = 0, flip: bool = True,
                 frames_per_scene: int | None = None, size: int | None = None,
                 scenes_per_photo: int | None = None) -> None:
        if split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {split!r}")
        cfg = config or EmbeddedDataConfig()
        overrides: dict[str, Any] = {}
        if frames_per_scene is not None:
            overrides["frames_per_scene"] = frames_per_scene
        if size is not None:
            overrides["size"] = size
        if scenes_per_photo is not None:
            overrides["train_scenes_per_photo" if split == "train" else "val_scenes_per_photo"] = scenes_per_photo
        cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        super().__init__(crop_size, seed, flip)
        if self.crop is not None and (self.crop[0] > cfg.size or self.crop[1] > cfg.size):
            raise InputError(f"crop_size {self.crop} is larger than the embedded scene size {cfg.size}; "
                             f"lower crop_size or raise size")
        self.config = cfg
        self.split = split
        folder_photos, self._loader = folder_photo_loader(
            cfg.photo_sets("train" if split == "train" else "heldout", min_side=cfg.size))
        self.photos = split_photos(cfg)[split] + folder_photos
        per_photo = cfg.train_scenes_per_photo if split == "train" else cfg.val_scenes_per_photo
        self.scenes = _make_scenes(self.photos, per_photo, cfg.size, cfg, self.seed, split, self._loader)
        self._backgrounds: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.scenes) * self.config.frames_per_scene

    def scene_background(self, scene: int) -> np.ndarray:
        """Give the clean background of a scene (cached, read-only).

        Args:
            scene: the scene's number (index into ``scenes``).

        Returns:
            (size, size, 3) uint8 RGB.
        """
        bg = self._backgrounds.get(scene)
        if bg is None:
            bg = _scene_background(self.scenes[scene], self.config.size, self._loader)
            bg.setflags(write=False)
            self._backgrounds[scene] = bg
        return bg

    def render_frame(self, scene: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Render one frame of a scene; the same ``(seed, split, scene, frame)`` always gives the same rain.

        Args:
            scene: the scene's number (index into ``scenes``).
            frame: the frame's number, in ``[0, frames_per_scene)``.

        Returns:
            (rainy (size, size, 3) uint8 RGB, rain layer (size, size) float32 in [0, 1]).

        Raises:
            IndexError: ``frame`` is out of range.
        """
        if not 0 <= frame < self.config.frames_per_scene:
            raise IndexError(f"frame {frame} out of range (frames_per_scene={self.config.frames_per_scene})")
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, _STREAM_IDS[self.split], _FRAME_STREAM,
                                     _stable_id(self.scenes[scene].name), frame])
        rainy, rain = add_rain(_float01(self.scene_background(scene)), rng, self.config.rain)
        return _uint8(rainy), rain

    def _pair(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
        f = self.config.frames_per_scene
        scene, i = divmod(index, f)
        j = _other_frame(i, f, rng)
        return self.render_frame(scene, i)[0], self.render_frame(scene, j)[0], self.scenes[scene].name
