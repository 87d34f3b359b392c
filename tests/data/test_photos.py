"""The photos bundled with scikit-image (`mgid.data.photos`), offline.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import numpy as np
import pytest

from mgid.data import (
    list_photos,
    load_photo,
)


def test_bundled_photos_load_offline():
    names = list_photos()
    for expected in ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "motorcycle_right",
                     "hubble_deep_field", "camera", "grass", "gravel", "brick", "moon"]:
        assert expected in names
    assert "horse" not in names  # binary silhouette, useless as a background
    for n in names:
        img = load_photo(n)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256
        assert img.std() > 10  # a real image, not a blank
    cam = load_photo("camera")
    np.testing.assert_array_equal(cam[..., 0], cam[..., 2])
    with pytest.raises(KeyError, match="kidney"):
        load_photo("kidney")
