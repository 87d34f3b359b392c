"""Real photographs that scikit-image ships inside its wheel: backgrounds for the embedded data set.

`list_photos` names the bundled photos (nothing is ever downloaded) and `load_photo` reads one as (H, W, 3) uint8
RGB from the installed ``skimage/data`` folder. Which photos are left out and why: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import importlib.resources
from functools import lru_cache
from pathlib import Path

import numpy as np

from .imageio import read_image

#: Photo name -> file name inside ``skimage/data`` (scikit-image 0.26 bundles all of these).
PHOTO_FILES: dict[str, str] = {
    # colour
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    # grey (read as 3 channels)
    "camera": "camera.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
    "moon": "moon.png",
}

#: Photos showing the same scene; a train/val split must keep each group on one side.
PHOTO_GROUPS: dict[str, str] = {"motorcycle_left": "motorcycle", "motorcycle_right": "motorcycle"}


def _data_dir() -> Path:
    """The installed ``skimage/data`` folder (raises ``ImportError`` without scikit-image)."""
    return Path(str(importlib.resources.files("skimage.data")))


def photo_path(name: str) -> Path:
    """Path of the bundled file for a photo.

    Args:
        name: one of `PHOTO_FILES`' names.

    Returns:
        The file's path (it may be absent from this installation).

    Raises:
        KeyError: an unknown name.
        ImportError: scikit-image is not installed.
    """
    if name not in PHOTO_FILES:
        raise KeyError(f"unknown photo {name!r}; available: {', '.join(PHOTO_FILES)}")
    return _data_dir() / PHOTO_FILES[name]


@lru_cache(maxsize=1)
def list_photos() -> tuple[str, ...]:
    """Names of the bundled photos present in this installation (no download, no decoding)."""
    try:
        root = _data_dir()
    except ImportError:
        return ()
    return tuple(name for name, fname in PHOTO_FILES.items() if (root / fname).is_file())


@lru_cache(maxsize=len(PHOTO_FILES))
def _load_cached(name: str) -> np.ndarray:
    img = read_image(photo_path(name))
    img.setflags(write=False)  # shared by the cache: callers must copy before writing
    return img


def load_photo(name: str) -> np.ndarray:
    """A bundled photo's pixels (read-only; cached after the first call).

    Args:
        name: one of `list_photos`' names.

    Returns:
        (H, W, 3) uint8 RGB; grey photos as 3 equal channels.

    Raises:
        KeyError: an unknown name.
        FileNotFoundError: this scikit-image installation does not bundle the file.
    """
    path = photo_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"photo {name!r} is not bundled with this scikit-image installation ({path} missing); "
            f"available: {', '.join(list_photos())}"
        )
    return _load_cached(name)
