"""Tests of mgid.data.perspective_rain, the held-out evaluation rain renderer.

Images are tiny (at most 64x64) so the whole file runs in about a second.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import math

import numpy as np
import pytest

import mgid.data.perspective_rain as pr
from mgid.data.perspective_rain import (
    PERSPECTIVE_HEAVY_RAIN,
    PERSPECTIVE_RAIN,
    PerspectiveRainConfig,
    Streaks,
    add_perspective_rain,
    render_streaks,
    sample_streaks,
)
from mgid.eval.metrics import psnr

PRESETS = [pytest.param(PERSPECTIVE_RAIN, id="default"), pytest.param(PERSPECTIVE_HEAVY_RAIN, id="heavy")]


def _textured(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    """A smooth, mid-dark colour background, HxWx3 float32 in [0, 1] (rain is visible on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 0.25 + 0.15 * np.sin(xx / 5.0)[..., None] * np.cos(yy / 7.0)[..., None]
    img = base + rng.uniform(-0.05, 0.05, (h, w, 3)).astype(np.float32) + np.array([0.1, 0.0, -0.05], np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _one_streak(cx: float, cy: float, angle_deg: float, half: float, sigma: float, tau: float,
                opacity: float) -> Streaks:
    a = math.radians(angle_deg)
    arr = lambda v: np.array([v], np.float64)  # noqa: E731
    return Streaks(cx=arr(cx), cy=arr(cy), ux=arr(math.sin(a)), uy=arr(math.cos(a)), half=arr(half),
                   sigma=arr(sigma), tau=arr(tau), opacity=arr(opacity))


@pytest.mark.parametrize("cfg", PRESETS)
def test_deterministic_for_a_seed(cfg):
    clean = _textured()
    r1, a1 = add_perspective_rain(clean, np.random.default_rng(7), cfg)
    r2, a2 = add_perspective_rain(clean, np.random.default_rng(7), cfg)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(a1, a2)


def test_default_config_is_the_default_preset():
    clean = _textured()
    r1, _ = add_perspective_rain(clean, np.random.default_rng(3))
    r2, _ = add_perspective_rain(clean, np.random.default_rng(3), PERSPECTIVE_RAIN)
    np.testing.assert_array_equal(r1, r2)


def test_different_seeds_differ():
    clean = _textured()
    r1, a1 = add_perspective_rain(clean, np.random.default_rng(1))
    r2, a2 = add_perspective_rain(clean, np.random.default_rng(2))
    assert not np.array_equal(a1, a2)
    assert np.abs(r1 - r2).max() > 0.05


@pytest.mark.parametrize("cfg", PRESETS)
@pytest.mark.parametrize("shape", [(48, 48), (24, 40), (1, 1)])
def test_shape_dtype_range(cfg, shape):
    clean = _textured(*shape)
    rainy, alpha = add_perspective_rain(clean, np.random.default_rng(0), cfg)
    assert rainy.shape == shape + (3,) and rainy.dtype == np.float32
    assert alpha.shape == shape and alpha.dtype == np.float32
    assert rainy.min() >= 0.0 and rainy.max() <= 1.0
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0


def test_accepts_uint8_like_float64_input():
    clean = _textured().astype(np.float64)
    rainy, _ = add_perspective_rain(clean, np.random.default_rng(0))
    assert rainy.dtype == np.float32


@pytest.mark.parametrize("cfg", PRESETS)
def test_rain_only_brightens_and_leaves_alpha_zero_pixels_untouched(cfg):
    clean = _textured(64, 64)
    rainy, alpha = add_perspective_rain(clean, np.random.default_rng(4), cfg)
    assert (rainy >= clean).all()  # a drop never darkens what lies behind it
    untouched = alpha == 0.0
    assert (~untouched).any()
    if cfg is PERSPECTIVE_RAIN:
        assert untouched.any()  # moderate rain leaves gaps (heavy rain may cover every pixel)
    np.testing.assert_array_equal(rainy[untouched], clean[untouched])
    assert (rainy - clean).max() > 0.2  # and the rain is clearly visible on a darkish background


def test_rain_is_visible_on_dark_and_invisible_on_white():
    rng_dark, rng_white = np.random.default_rng(5), np.random.default_rng(5)
    dark = np.zeros((48, 48, 3), np.float32)
    white = np.ones((48, 48, 3), np.float32)
    rainy_dark, alpha = add_perspective_rain(dark, rng_dark)
    rainy_white, _ = add_perspective_rain(white, rng_white)
    np.testing.assert_array_equal(rainy_white, white)  # nothing is brighter than white: no streak shows
    # on black, the drop colour is the grey sky mixed with the brightened blur: bright grey where alpha ~ 1
    assert rainy_dark.max() > 0.4
    np.testing.assert_allclose(rainy_dark[..., 0], rainy_dark[..., 2])  # grey in, grey out


def test_heavy_rain_is_stronger_than_default():
    default, heavy = [], []
    for seed in range(3):
        clean = _textured(64, 64, seed)
        r_d, _ = add_perspective_rain(clean, np.random.default_rng(seed), PERSPECTIVE_RAIN)
        r_h, _ = add_perspective_rain(clean, np.random.default_rng(seed), PERSPECTIVE_HEAVY_RAIN)
        default.append(psnr(_u8(r_d), _u8(clean)))
        heavy.append(psnr(_u8(r_h), _u8(clean)))
    assert np.mean(heavy) < np.mean(default) - 3.0, (heavy, default)


def test_zero_density_leaves_the_image_unchanged():
    clean = _textured()
    cfg = dataclasses.replace(PERSPECTIVE_RAIN, density_range=(0.0, 0.0))
    rainy, alpha = add_perspective_rain(clean, np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(rainy, clean)
    assert not alpha.any()


def test_single_streak_profile_is_gaussian_and_zero_far_away():
    # vertical streak through (20, 30): core from y = 20 to 40, sigma 1.5, taper 3
    alpha = render_streaks(64, 48, _one_streak(cx=20.0, cy=30.0, angle_deg=0.0, half=10.0, sigma=1.5, tau=3.0,
                                               opacity=0.8))
    assert alpha[30, 20] == pytest.approx(0.8, abs=1e-6)  # peak on the axis
    assert alpha[25, 20] == pytest.approx(0.8, abs=1e-6)  # flat along the core
    assert alpha[30, 22] == pytest.approx(0.8 * math.exp(-4.0 / (2 * 1.5 ** 2)), rel=1e-5)  # across: Gaussian
    assert alpha[43, 20] == pytest.approx(0.8 * math.exp(-9.0 / (2 * 3.0 ** 2)), rel=1e-5)  # beyond the end: taper
    # the box ends at 3.5 sigma across (x in [14.75, 25.25]) and 3.5 tau beyond the ends (y in [9.5, 50.5])
    assert alpha[30, 25] > 0.0 and alpha[30, 15] > 0.0 and alpha[50, 20] > 0.0 and alpha[10, 20] > 0.0
    assert not alpha[:, 26:].any() and not alpha[:, :15].any()
    assert not alpha[51:].any() and not alpha[:10].any()


def test_tilted_streak_follows_its_angle():
    # positive angle leans right going down: below the centre the ridge moves to larger x
    alpha = render_streaks(64, 64, _one_streak(cx=32.0, cy=32.0, angle_deg=20.0, half=20.0, sigma=1.0, tau=2.0,
                                               opacity=1.0))
    row = 32 + 15
    assert int(np.argmax(alpha[row])) == round(32 + 15 * math.tan(math.radians(20.0)))


def test_streaks_outside_the_image_draw_nothing():
    alpha = render_streaks(16, 16, _one_streak(cx=-30.0, cy=8.0, angle_deg=0.0, half=5.0, sigma=1.0, tau=1.0,
                                               opacity=1.0))
    assert not alpha.any()


def test_perspective_puts_near_streaks_low_in_the_frame():
    cfg = dataclasses.replace(PERSPECTIVE_RAIN, perspective=1.0, length_jitter=0.0)
    streaks, _ = sample_streaks(200, 200, np.random.default_rng(0), cfg)
    assert len(streaks) > 100
    # half length ~ 1 / depth; with perspective 1 the row is a monotone function of nearness (and extent)
    inside = (streaks.cy > 0) & (streaks.cy < 200)
    corr = np.corrcoef(streaks.half[inside], streaks.cy[inside])[0, 1]
    assert corr > 0.8
    # and far (short) streaks outnumber near (long) ones: p(z) ~ z^2
    mid = 0.5 * (streaks.half.min() + streaks.half.max())
    assert (streaks.half < mid).sum() > 2 * (streaks.half >= mid).sum()


@pytest.mark.parametrize("field, value", [
    ("density_range", (-1.0, 5.0)),
    ("density_range", (9.0, 5.0)),
    ("angle_range", (-70.0, 0.0)),
    ("angle_jitter", -1.0),
    ("depth_range", (0.0, 3.0)),
    ("depth_power", -0.5),
    ("perspective", 1.5),
    ("length_range", (0.5, 3.0)),
    ("length_jitter", 1.0),
    ("sigma_range", (0.0, 1.0)),
    ("min_sigma", 0.0),
    ("end_softness", -0.1),
    ("opacity_range", (0.5, 1.2)),
    ("opacity_jitter", 2.0),
    ("opacity_depth_exponent", -1.0),
    ("sky_range", (0.5, 1.1)),
    ("sky_mix", -0.1),
    ("env_gain", -1.0),
    ("env_lift", 2.0),
    ("refraction_blur", 0.0),
    ("env_gain", float("nan")),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=rf"PerspectiveRainConfig\.{field}\b"):
        PerspectiveRainConfig(**{field: value})


def test_config_is_frozen_and_presets_are_valid():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PERSPECTIVE_RAIN.sky_mix = 0.5  # type: ignore[misc]
    assert isinstance(PERSPECTIVE_HEAVY_RAIN, PerspectiveRainConfig)
    assert PERSPECTIVE_HEAVY_RAIN.length_range[0] > PERSPECTIVE_RAIN.length_range[1]
    assert PERSPECTIVE_HEAVY_RAIN.sigma_range[0] > PERSPECTIVE_RAIN.sigma_range[1]


@pytest.mark.parametrize("shape", [(16, 16), (16, 16, 4), (16, 16, 1), (3, 16, 16), (0, 16, 3)])
def test_wrong_input_shape_raises(shape):
    with pytest.raises(ValueError, match="HxWx3"):
        add_perspective_rain(np.zeros(shape, np.float32), np.random.default_rng(0))


def test_independent_of_the_training_renderer():
    # The whole point of this renderer is held-out evaluation: it must share no code with the training one.
    tree = ast.parse(inspect.getsource(pr))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            imported.update(alias.name for alias in node.names)
    assert not any("synthetic_rain" in name or name in {"add_rain", "RainConfig"} for name in imported)
    calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and isinstance(n.func.value, ast.Name)}
    assert not calls & {"cv2.line", "cv2.filter2D"}
