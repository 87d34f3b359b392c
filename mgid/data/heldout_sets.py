"""The fixed held-out paired evaluation sets: their rain (`HELDOUT_RAIN`, `HELDOUT_SETS`) and `EmbeddedPairedSet`.

Each set pairs clean crops of the held-out (``val``) photos with a rainy version made by a renderer fixed here,
not by the training config, so numbers compare across runs and recipes (the sets: docs/EVALUATE.md).
`EmbeddedPairedSet.rainy_frames` gives extra rainy frames of a pair's scene; `heldout_folder` names each set's
folder on disk.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mgid.errors import InputError

from .embedded import (
    _FRAME_STREAM,
    _STREAM_IDS,
    EmbeddedDataConfig,
    PhotoLoader,
    _float01,
    _make_scenes,
    _scene_background,
    _uint8,
    folder_photo_loader,
    split_photos,
)
from .imageio import PathLike, to_tensor
from .layer_rain import LayerRainConfig
from .pair_sampling import _stable_id
from .photos import load_photo
from .synthetic_rain import RainConfig, add_rain


def _render_streaks(rain: RainConfig) -> Any:
    def render(clean01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return add_rain(clean01, rng, rain, illumination=False, veil=False)[0]
    return render


def _render_layered(layer: LayerRainConfig) -> Any:
    rain = RainConfig(layer_probability=1.0, layer=layer)

    def render(clean01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # veil allowed: the layer renderer's accumulation is part of what this set measures (RainConfig's
        # own veil stays off, veil_probability 0); no illumination change, so clean is the exact ground truth
        return add_rain(clean01, rng, rain, illumination=False, veil=True)[0]
    return render


def _render_perspective(heavy: bool) -> Any:
    def render(clean01: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from .perspective_rain import PERSPECTIVE_HEAVY_RAIN, PERSPECTIVE_RAIN, add_perspective_rain

        return add_perspective_rain(clean01, rng, PERSPECTIVE_HEAVY_RAIN if heavy else PERSPECTIVE_RAIN)[0]
    return render


#: The heavy rain of the training renderer's held-out set: long, wide, dense, blurred streaks.
HEAVY_RAIN = RainConfig(density_range=(30.0, 50.0), length_range=(30.0, 60.0), width_range=(2.0, 4.0),
                        blur_range=(5.0, 12.0), intensity_range=(0.6, 1.0))

#: Rain of kinds the first renderer lacked: two or three fall directions per image, long streaks that
#: cross the image, drizzle and wide, soft near-camera streaks (each kind in half the images).
VARIED_RAIN = RainConfig(directions_range=(2, 3), long_probability=0.5, drizzle_probability=0.5,
                         near_probability=0.5)

#: The layer rain of the ``layered`` held-out set (fixed here, not the training setting): one to three
#: streak layers of Rain100L to Rain100H density, and a veil in half the images. A single image per pair, so
#: unlike the training setting it need not keep two frames' rain apart: it is somewhat denser.
#: Every field is given, so that changing the training defaults never changes this set.
LAYERED_RAIN = LayerRainConfig(layers_range=(1, 3), density_range=(0.3, 1.5), angle_range=(-30.0, 30.0),
                               angle_spread=12.0, length_range=(20.0, 45.0), softness_range=(0.2, 0.8),
                               saturated_share=0.1, brightness_range=(0.4, 0.95), streak_white_quantile=0.95,
                               veil_probability=0.5, veil_range=(0.05, 0.25), airlight_range=(0.75, 1.0))

#: The held-out rain of each paired set, fixed here (not taken from the training config) so that
#: numbers compare across runs and recipes. "streaks": the training renderer at the rain density of
#: the original paired set, no veil; "perspective": a second, independent renderer
#: (`mgid.data.perspective_rain`: Gaussian streak profiles, perspective, refraction-like brightening)
#: the model never trains on; "heavy": the training renderer's heavy rain; "varied": `VARIED_RAIN`;
#: "layered": the benchmarks' kind of rain (`mgid.data.layer_rain`) at `LAYERED_RAIN`, veil included.
HELDOUT_RAIN: dict[str, Any] = {
    "streaks": _render_streaks(RainConfig()),
    "perspective": _render_perspective(heavy=False),
    "heavy": _render_streaks(HEAVY_RAIN),
    "varied": _render_streaks(VARIED_RAIN),
    "layered": _render_layered(LAYERED_RAIN),
}
#: The held-out sets reported by validation, `mgid evaluate --heldout` and the model card.
HELDOUT_SETS = tuple(HELDOUT_RAIN)
#: Stream id of each held-out set (each set draws its own rain).
_HELDOUT_STREAM = {"streaks": 0, "perspective": 1, "heavy": 2, "varied": 3, "layered": 4}
#: Stream id that, with the folder's name, separates the rain of a photo folder's held-out set from the others.
_PHOTO_SET_STREAM = 100
#: Stream of the extra frames of a held-out scene (`EmbeddedPairedSet.rainy_frames`).
_EXTRA_FRAME_STREAM = 13


class EmbeddedPairedSet(Dataset):
    """Held-out paired evaluation set: (rainy, clean) from the held-out photos with fixed rain.

    Clean images are size x size crops of the ``val`` photos (their own scene stream, so different
    crops from `EmbeddedTimeLapse` "val"); rainy = clean + rain of kind ``rain`` (`HELDOUT_RAIN`)
    without any illumination change (and without a veil, except the ``layered`` set's own accumulation),
    so the clean image is the exact ground truth. Returns ``{"rainy", "clean"}`` (3, size, size) float in
    [-1, 1] and ``"name"`` ("001", "002", ...).

    Args:
        n: number of pairs (default ``config.paired_count``).
        seed: fixes the crops and the rain (default ``config.heldout_seed``).
        size: side of the images (default ``config.paired_size``).
        rain: which held-out rain, one of `HELDOUT_SETS`.
        photo_folder: make the clean images from the held-out photos of this folder of clean photos
            (`mgid.data.photo_folders.heldout_photos`, ``config.photo_heldout_per_folder`` per folder, bounds of
            ``config``) instead of the bundled ``val`` photos; its rain is drawn from a stream of its own.

    Raises:
        ValueError: an unknown ``rain``, ``n < 1``, ``size < 8``, or a photo folder without held-out photos.
    """

    def __init__(self, n: int | None = None, *, seed: int | None = None, size: int | None = None,
                 config: EmbeddedDataConfig | None = None, rain: str = "streaks",
                 photo_folder: PathLike | None = None) -> None:
        cfg = config or EmbeddedDataConfig()
        if rain not in HELDOUT_RAIN:
            raise InputError(f"unknown held-out rain {rain!r}; choose one of {', '.join(HELDOUT_SETS)}")
        self.rain = rain
        self.size = int(cfg.paired_size if size is None else size)
        if self.size < 8:
            raise InputError(f"EmbeddedPairedSet needs size >= 8, got {self.size}")
        self.config = cfg
        self.n = cfg.paired_count if n is None else int(n)
        if self.n < 1:
            raise InputError(f"EmbeddedPairedSet needs n >= 1, got {self.n}")
        self.seed = int(cfg.heldout_seed if seed is None else seed)
        self._loader: PhotoLoader = load_photo
        self._photo_stream: tuple[int, ...] = ()
        if photo_folder is None:
            photos = split_photos(cfg)["val"]
        else:
            if cfg.photo_heldout_per_folder < 1:
                raise InputError(f"a held-out set of {photo_folder} needs held-out photos: set "
                                 f"photo_heldout_per_folder >= 1 (it is {cfg.photo_heldout_per_folder})")
            photos, self._loader = folder_photo_loader(cfg.photo_sets("heldout", self.size, folders=[photo_folder]))
            self._photo_stream = (_PHOTO_SET_STREAM, _stable_id(Path(photo_folder).name))
        per_photo = -(-self.n // len(photos))  # ceil
        scenes = _make_scenes(photos, per_photo, self.size, cfg, self.seed, "paired", self._loader)
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
        if self.rain != "streaks" or extra or self._photo_stream:  # the bundled "streaks" set keeps the
            stream.append(_HELDOUT_STREAM[self.rain])                  # original paired set's stream
        rng = np.random.default_rng([*stream, *self._photo_stream, *extra])
        return _uint8(HELDOUT_RAIN[self.rain](_float01(clean), rng))

    def images(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(rainy, clean) as size x size x 3 uint8 RGB."""
        clean = _scene_background(self.scenes[index], self.size, self._loader)
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
