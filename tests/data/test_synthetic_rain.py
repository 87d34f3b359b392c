"""Synthetic rain (`mgid.data.synthetic_rain`): settings, layers, blending, speed.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from mgid.data import (
    RainConfig,
    add_rain,
    render_rain_layer,
)
from mgid.data.synthetic_rain import sample_frame_rain
from tests.data.builders import (
    PURE_RAIN,
    pattern,
)


def test_rain_config_validates():
    with pytest.raises(ValueError, match="angle_range"):
        RainConfig(angle_range=(-40.0, 10.0))
    with pytest.raises(ValueError, match="length_range"):
        RainConfig(length_range=(50.0, 10.0))
    with pytest.raises(ValueError, match="layers"):
        RainConfig(layers=0)


def test_rain_layer_deterministic_and_varied():
    a = render_rain_layer(64, 48, np.random.default_rng(7))
    b = render_rain_layer(64, 48, np.random.default_rng(7))
    c = render_rain_layer(64, 48, np.random.default_rng(8))
    assert a.shape == (64, 48) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.max() > 0.2
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # frames differ in their per-frame parameters, not just positions
    p = [sample_frame_rain(np.random.default_rng(s), RainConfig()) for s in range(6)]
    for attr in ["density", "angle", "length", "width", "intensity", "blur"]:
        values = [getattr(x, attr) for x in p]
        assert max(values) > min(values), attr
    assert all(-30.0 <= x.angle <= 30.0 for x in p)


def test_add_rain_screen_blend_only_brightens_where_rain():
    bg = pattern(64, 64).astype(np.float32) / 255.0
    rainy, rain = add_rain(bg, np.random.default_rng(3), PURE_RAIN)
    assert rainy.shape == bg.shape and rainy.dtype == np.float32
    np.testing.assert_allclose(rainy, 1.0 - (1.0 - bg) * (1.0 - rain[..., None]), atol=1e-6)
    assert (rainy >= bg - 1e-6).all()  # screen blending never darkens
    dry = rain == 0.0
    assert dry.any() and (~dry).any()
    np.testing.assert_array_equal(rainy[dry], bg[dry])  # untouched where no rain is drawn
    assert (rainy[~dry] > bg[~dry]).mean() > 0.99  # changed where rain is drawn (bg < 1 everywhere)
    nothing = RainConfig(density_range=(0.0, 0.0), gain_range=(1.0, 1.0), offset_range=(0.0, 0.0),
                         veil_probability=0.0)
    np.testing.assert_array_equal(add_rain(bg, np.random.default_rng(0), nothing)[0], bg)


def test_add_rain_veil_and_illumination():
    bg = pattern(16, 16).astype(np.float32) / 255.0
    veil = RainConfig(density_range=(0.0, 0.0), gain_range=(1.0, 1.0), offset_range=(0.0, 0.0),
                      veil_probability=1.0, veil_range=(0.5, 0.5), airlight_range=(0.8, 0.8))
    out, _ = add_rain(bg, np.random.default_rng(0), veil)
    np.testing.assert_allclose(out, bg * 0.5 + 0.8 * 0.5, atol=1e-6)
    gain = RainConfig(density_range=(0.0, 0.0), gain_range=(1.1, 1.1), offset_range=(0.0, 0.0),
                      veil_probability=0.0)
    np.testing.assert_allclose(add_rain(bg, np.random.default_rng(0), gain)[0], np.clip(bg * 1.1, 0, 1), atol=1e-6)
    np.testing.assert_allclose(add_rain(bg, np.random.default_rng(0), gain, illumination=False)[0], bg)


def test_add_rain_is_fast():
    bg = pattern(256, 256).astype(np.float32) / 255.0
    add_rain(bg, np.random.default_rng(0))
    t0 = time.perf_counter()
    for s in range(10):
        add_rain(bg, np.random.default_rng(s))
    per_frame = (time.perf_counter() - t0) / 10
    assert per_frame < 0.05, f"{per_frame * 1e3:.1f} ms per 256x256 frame"  # a few ms when idle
