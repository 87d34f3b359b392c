"""Time-lapse training data: pairs of frames of one static scene with different rain.

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
"""
from __future__ import annotations

import dataclasses
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import cv2
import numpy as np
from torch.utils.data import Dataset

from mgid.literals import check_literals

from .imageio import IMAGE_SUFFIXES, PathLike, image_size, list_images, read_image, to_tensor, write_image
from .photos import PHOTO_GROUPS, list_photos, load_photo
from .procedural import DeadLeavesConfig
from .synthetic_rain import RainConfig, add_rain

SPLITS = ("train", "val")
#: How the embedded default makes training pairs: "stream" renders every pair afresh
#: (`mgid.data.stream.StreamingTimeLapse`), "scenes" cuts a fixed set of scenes (`EmbeddedTimeLapse`).
EmbeddedMode = Literal["stream", "scenes"]
EMBEDDED_MODES = get_args(EmbeddedMode)
_SUFFIX_LIST = ", ".join(s[1:] for s in IMAGE_SUFFIXES)
# Separate random streams per use, so e.g. the paired set never repeats a val frame's rain.
_STREAM_IDS = {"train": 1, "val": 2, "paired": 3}
_FRAME_STREAM = 11  # rain of one frame
_SCENE_STREAM = 12  # geometry of one scene


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
            raise ValueError(f"crop size must be an int or (height, width), got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"crop size must be positive, got {size!r}")
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
        raise ValueError(f"the two frames of a pair differ in size: {a.shape} vs {b.shape}")
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


# --------------------------------------------------------------------------------------------------
# embedded default: photos + synthetic rain


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

    def __post_init__(self) -> None:
        check_literals(self)  # mode: from its Literal type
        if self.size < 8:
            raise ValueError(f"EmbeddedDataConfig.size must be >= 8, got {self.size}")
        if self.frames_per_scene < 2:
            raise ValueError(f"EmbeddedDataConfig.frames_per_scene must be >= 2 (pairs), got {self.frames_per_scene}")
        if self.train_scenes_per_photo < 1 or self.val_scenes_per_photo < 1:
            raise ValueError("EmbeddedDataConfig: scenes per photo must be >= 1")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"EmbeddedDataConfig.scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        if self.pairs_per_epoch < 1:
            raise ValueError(f"EmbeddedDataConfig.pairs_per_epoch must be >= 1, got {self.pairs_per_epoch}")
        if not 0.0 <= self.procedural_probability <= 1.0:
            raise ValueError("EmbeddedDataConfig.procedural_probability must lie in [0, 1], got "
                             f"{self.procedural_probability}")
        zlo, zhi = self.zoom_range
        if not 0 < zlo <= zhi:
            raise ValueError(f"EmbeddedDataConfig.zoom_range must satisfy 0 < low <= high, got {self.zoom_range}")
        if not 0.0 <= self.colour_jitter < 0.5:
            raise ValueError(f"EmbeddedDataConfig.colour_jitter must lie in [0, 0.5), got {self.colour_jitter}")


def split_photos(config: EmbeddedDataConfig) -> dict[str, tuple[str, ...]]:
    """Photos of each split: ``{"train": (...), "val": (...)}``, disjoint, groups kept together."""
    available = list_photos()
    if not available:
        raise FileNotFoundError("no bundled photos found: is scikit-image installed?")
    unknown = [p for p in config.val_photos if p not in available]
    if unknown:
        raise ValueError(f"EmbeddedDataConfig.val_photos names photos that are not available: {unknown}; "
                         f"available: {', '.join(available)}")
    val_groups = {PHOTO_GROUPS.get(p, p) for p in config.val_photos}
    val = tuple(p for p in available if PHOTO_GROUPS.get(p, p) in val_groups)
    train = tuple(p for p in available if p not in val)
    if not train or not val:
        raise ValueError("EmbeddedDataConfig.val_photos must leave at least one photo for each split")
    return {"train": train, "val": val}


@dataclass(frozen=True)
class SceneSpec:
    """Where a scene comes from: a square region (top, left, side) of a photo, resized and maybe flipped."""

    name: str
    photo: str
    top: int
    left: int
    side: int
    flip: bool


def _make_scenes(photos: Sequence[str], per_photo: int, size: int, config: EmbeddedDataConfig,
                 seed: int, stream: str) -> list[SceneSpec]:
    scenes = []
    for photo in photos:
        ph, pw = load_photo(photo).shape[:2]
        short = min(ph, pw)
        for s in range(per_photo):
            rng = np.random.default_rng([seed & 0xFFFFFFFF, _STREAM_IDS[stream], _SCENE_STREAM, _stable_id(photo), s])
            # zoom < 1 shrinks the photo: a region of side size/zoom becomes the size x size scene
            zoom = max(rng.uniform(*config.scale_range), size / short)
            side = min(short, max(1, int(round(size / zoom))))
            top = int(rng.integers(0, ph - side + 1))
            left = int(rng.integers(0, pw - side + 1))
            flip = bool(config.flip_scenes and rng.random() < 0.5)
            scenes.append(SceneSpec(f"{photo}-{s:03d}", photo, top, left, side, flip))
    return scenes


def _scene_background(spec: SceneSpec, size: int) -> np.ndarray:
    """The clean scene: size x size x 3 uint8 RGB."""
    region = load_photo(spec.photo)[spec.top:spec.top + spec.side, spec.left:spec.left + spec.side]
    interp = cv2.INTER_AREA if spec.side > size else cv2.INTER_CUBIC
    img = cv2.resize(np.ascontiguousarray(region), (size, size), interpolation=interp)
    return np.ascontiguousarray(img[:, ::-1]) if spec.flip else img


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
        split: "train" or "val" (disjoint photos, see `EmbeddedDataConfig`).
        config: the data settings; ``frames_per_scene``, ``size`` and ``scenes_per_photo`` override it.
        crop_size: int or (h, w) random crop of each pair; None = the full scene.
        seed: fixes scenes, rain and (with the epoch) the crops.
        flip: random horizontal flip of each pair.
    """

    def __init__(self, split: str = "train", *, config: EmbeddedDataConfig | None = None,
                 crop_size: int | Sequence[int] | None = None, seed: int = 0, flip: bool = True,
                 frames_per_scene: int | None = None, size: int | None = None,
                 scenes_per_photo: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
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
            raise ValueError(f"crop_size {self.crop} is larger than the embedded scene size {cfg.size}; "
                             f"lower crop_size or raise size")
        self.config = cfg
        self.split = split
        self.photos = split_photos(cfg)[split]
        per_photo = cfg.train_scenes_per_photo if split == "train" else cfg.val_scenes_per_photo
        self.scenes = _make_scenes(self.photos, per_photo, cfg.size, cfg, self.seed, split)
        self._backgrounds: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.scenes) * self.config.frames_per_scene

    def scene_background(self, scene: int) -> np.ndarray:
        """Clean background of scene number ``scene``: size x size x 3 uint8 RGB (cached)."""
        bg = self._backgrounds.get(scene)
        if bg is None:
            bg = _scene_background(self.scenes[scene], self.config.size)
            bg.setflags(write=False)
            self._backgrounds[scene] = bg
        return bg

    def render_frame(self, scene: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``frame`` of scene ``scene``: (rainy size x size x 3 uint8 RGB, rain layer HxW float32)."""
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


def _render_streaks(rain: RainConfig) -> Any:
    def render(clean01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return add_rain(clean01, rng, rain, illumination=False, veil=False)[0]
    return render


def _render_perspective(heavy: bool) -> Any:
    def render(clean01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from .perspective_rain import PERSPECTIVE_HEAVY_RAIN, PERSPECTIVE_RAIN, add_perspective_rain

        return add_perspective_rain(clean01, rng, PERSPECTIVE_HEAVY_RAIN if heavy else PERSPECTIVE_RAIN)[0]
    return render


#: The heavy rain of the training renderer's held-out set: long, wide, dense, blurred streaks.
HEAVY_RAIN = RainConfig(density_range=(30.0, 50.0), length_range=(30.0, 60.0), width_range=(2.0, 4.0),
                        blur_range=(5.0, 12.0), intensity_range=(0.6, 1.0))

#: The held-out rain of each paired set, fixed here (not taken from the training config) so that
#: numbers compare across runs and recipes. "streaks": the training renderer at the rain density of
#: the original paired set, no veil; "perspective": a second, independent renderer
#: (`mgid.data.perspective_rain`: Gaussian streak profiles, perspective, refraction-like brightening)
#: the model never trains on; "heavy": the training renderer's heavy rain.
HELDOUT_RAIN: dict[str, Any] = {
    "streaks": _render_streaks(RainConfig()),
    "perspective": _render_perspective(heavy=False),
    "heavy": _render_streaks(HEAVY_RAIN),
}
#: The held-out sets reported by validation, `mgid evaluate --heldout` and the model card.
HELDOUT_SETS = tuple(HELDOUT_RAIN)
#: Stream id of each held-out set (each set draws its own rain).
_HELDOUT_STREAM = {"streaks": 0, "perspective": 1, "heavy": 2}
#: Stream of the extra frames of a held-out scene (`EmbeddedPairedSet.rainy_frames`).
_EXTRA_FRAME_STREAM = 13


class EmbeddedPairedSet(Dataset):
    """Held-out paired evaluation set: (rainy, clean) from the held-out photos with fixed rain.

    Clean images are size x size crops of the ``val`` photos (their own scene stream, so different
    crops from `EmbeddedTimeLapse` "val"); rainy = clean + rain of kind ``rain`` (`HELDOUT_RAIN`)
    without any illumination change or veil, so the clean image is the exact ground truth. Returns
    ``{"rainy", "clean"}`` (3, size, size) float in [-1, 1] and ``"name"`` ("001", "002", ...).

    Args:
        n: number of pairs (default ``config.paired_count``).
        seed: fixes the crops and the rain (default ``config.heldout_seed``).
        size: side of the images (default ``config.paired_size``).
        rain: which held-out rain, one of `HELDOUT_SETS`.
    """

    def __init__(self, n: int | None = None, *, seed: int | None = None, size: int | None = None,
                 config: EmbeddedDataConfig | None = None, rain: str = "streaks") -> None:
        cfg = config or EmbeddedDataConfig()
        if rain not in HELDOUT_RAIN:
            raise ValueError(f"unknown held-out rain {rain!r}; choose one of {', '.join(HELDOUT_SETS)}")
        self.rain = rain
        self.size = int(cfg.paired_size if size is None else size)
        if self.size < 8:
            raise ValueError(f"EmbeddedPairedSet needs size >= 8, got {self.size}")
        self.config = cfg
        self.n = cfg.paired_count if n is None else int(n)
        if self.n < 1:
            raise ValueError(f"EmbeddedPairedSet needs n >= 1, got {self.n}")
        self.seed = int(cfg.heldout_seed if seed is None else seed)
        photos = split_photos(cfg)["val"]
        per_photo = -(-self.n // len(photos))  # ceil
        scenes = _make_scenes(photos, per_photo, self.size, cfg, self.seed, "paired")
        # interleave photos so a small n still covers every held-out photo
        order = [k * per_photo + s for s in range(per_photo) for k in range(len(photos))]
        self.scenes = [scenes[k] for k in order[: self.n]]

    def __len__(self) -> int:
        return self.n

    def name(self, index: int) -> str:
        return f"{index + 1:03d}"

    def _rainy(self, clean: np.ndarray, index: int, *extra: int) -> np.ndarray:
        """``clean`` (uint8) with this set's rain drawn from the stream of pair ``index`` (+ ``extra`` ids)."""
        stream = [self.seed & 0xFFFFFFFF, _STREAM_IDS["paired"], _FRAME_STREAM, index]
        if self.rain != "streaks" or extra:  # the "streaks" set keeps the original paired set's stream
            stream.append(_HELDOUT_STREAM[self.rain])
        rng = np.random.default_rng([*stream, *extra])
        return _uint8(HELDOUT_RAIN[self.rain](_float01(clean), rng))

    def images(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rainy, clean) as size x size x 3 uint8 RGB."""
        clean = _scene_background(self.scenes[index], self.size)
        return self._rainy(clean, index), clean

    def rainy_frames(self, index: int, count: int) -> np.ndarray:
        """``count`` rainy frames of pair ``index``'s scene, (count, size, size, 3) uint8: frame 0 is the
        set's rainy image, the others have their own rain of the same renderer (a static camera's
        frames, for multi-frame references such as the temporal median)."""
        rainy, clean = self.images(index)
        return np.stack([rainy, *(self._rainy(clean, index, _EXTRA_FRAME_STREAM, k) for k in range(1, count))])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for EmbeddedPairedSet of length {self.n}")
        index %= self.n
        rainy, clean = self.images(index)
        return {"rainy": to_tensor(rainy), "clean": to_tensor(clean), "name": self.name(index)}


def heldout_folder(kind: str) -> str:
    """Folder name of held-out set ``kind`` in `write_synthetic_dataset`'s output: paired, paired_<kind>."""
    return "paired" if kind == "streaks" else f"paired_{kind}"


def write_synthetic_dataset(out_dir: PathLike, *, config: EmbeddedDataConfig | None = None, seed: int = 0,
                            paired_count: int | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the embedded default data set to disk.

    Layout::

        OUT/train/<scene>/<frame>.png      scene folders (readable by TimeLapseFolder)
        OUT/val/<scene>/<frame>.png
        OUT/paired/rain/rain-001.png       held-out paired set "streaks", Rain100L naming
        OUT/paired/norain/norain-001.png
        OUT/paired_perspective/...         held-out set "perspective" (the second renderer)
        OUT/paired_heavy/...               held-out set "heavy"

    The files hold exactly the frames `EmbeddedTimeLapse` / `EmbeddedPairedSet` produce for the same
    config and seed. Refuses to write into an ``OUT`` that already has ``train/``, ``val/`` or
    ``paired/`` unless ``overwrite=True``. Returns a summary dict (counts and paths).
    """
    cfg = config or EmbeddedDataConfig()
    if paired_count is not None:
        cfg = dataclasses.replace(cfg, paired_count=int(paired_count))
    out = Path(out_dir)
    existing = [d for d in ("train", "val", *map(heldout_folder, HELDOUT_SETS)) if (out / d).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already contains {', '.join(existing)}/; choose an empty folder "
                              f"or pass overwrite=True")
    summary: dict[str, Any] = {"root": str(out), "seed": int(seed), "size": cfg.size,
                               "frames_per_scene": cfg.frames_per_scene}
    files = 0
    for split in SPLITS:
        ds = EmbeddedTimeLapse(split, config=cfg, seed=seed)
        for k, spec in enumerate(ds.scenes):
            for f in range(cfg.frames_per_scene):
                write_image(out / split / spec.name / f"{f:03d}.png", ds.render_frame(k, f)[0])
                files += 1
        summary[f"{split}_scenes"] = len(ds.scenes)
        summary[f"{split}_photos"] = list(ds.photos)
    for kind in HELDOUT_SETS:
        paired = EmbeddedPairedSet(config=cfg, rain=kind)
        folder = out / heldout_folder(kind)
        for i in range(len(paired)):
            rainy, clean = paired.images(i)
            write_image(folder / "rain" / f"rain-{paired.name(i)}.png", rainy)
            write_image(folder / "norain" / f"norain-{paired.name(i)}.png", clean)
            files += 2
        summary[heldout_folder(kind)] = len(paired)
    summary["files"] = files
    return summary


# --------------------------------------------------------------------------------------------------
# real time-lapse data on disk

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


# --------------------------------------------------------------------------------------------------


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
