"""Real photographs that scikit-image ships inside its wheel: backgrounds for the embedded data set.

Only photos whose files are bundled with the package are listed, so nothing is ever downloaded:
scikit-image's ``kidney``, ``lily``, ``skin`` and ``eagle`` need a download and are left out. The
files are read directly from the installed ``skimage/data`` folder with `read_image` (the pixels are
identical to what ``skimage.data.<name>()`` returns), so scikit-image's fetcher is never involved.

Left out on purpose:

* ``horse``: a binary silhouette (two values), not a photograph; rain on it teaches nothing.
* ``chessboard``, ``logo``, ``text``, ``page``, ``coins``, ``cell``, ``retina`` and the microscopy
  images: synthetic drawings, documents or medical images rather than outdoor-like scenes.

Grey photos are returned as 3 equal channels. ``stereo_motorcycle`` contributes its two views as two
photos (``motorcycle_left``, ``motorcycle_right``); being one scene, they must stay in the same split.
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
    """Path of the bundled file for photo ``name``; raises ``KeyError`` for an unknown name."""
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
    """Photo ``name`` as an HxWx3 uint8 RGB array (read-only; cached after the first call).

    Raises ``KeyError`` for an unknown name and ``FileNotFoundError`` if this scikit-image
    installation does not bundle the file.
    """
    path = photo_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"photo {name!r} is not bundled with this scikit-image installation ({path} missing); "
            f"available: {', '.join(list_photos())}"
        )
    return _load_cached(name)
