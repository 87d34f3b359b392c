"""The renderer's optional kinds of rain (several directions, long streaks, drizzle, near-camera streaks)
and `rain_coverage`: each kind does what it says, draws nothing while off, and keeps rain sparse across
two frames."""
from __future__ import annotations

import numpy as np
import pytest

from mgid.data.heldout_sets import HELDOUT_SETS, VARIED_RAIN, EmbeddedPairedSet
from mgid.data.synthetic_rain import RainConfig, rain_coverage, render_rain_layer, sample_frame_rain

KINDS = {
    "directions": {"directions_range": (2, 3)},
    "long": {"long_probability": 1.0},
    "drizzle": {"drizzle_probability": 1.0},
    "near": {"near_probability": 1.0},
}


def _frames(cfg: RainConfig, n: int = 12, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_rain_layer(size, size, rng, cfg) for _ in range(n)]


def test_kinds_off_draw_nothing_from_the_stream():
    """Changing the ranges of a kind whose probability is 0 leaves every frame as it was."""
    other_ranges = RainConfig(long_length_range=(5.0, 6.0), long_density_range=(90.0, 99.0),
                              drizzle_density_range=(500.0, 600.0), near_width_range=(30.0, 40.0),
                              near_intensity_range=(0.9, 1.0))
    for a, b in zip(_frames(RainConfig()), _frames(other_ranges)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_changes_the_rain_and_is_seeded(kind):
    cfg = RainConfig(**KINDS[kind])
    plain, with_kind, again = _frames(RainConfig()), _frames(cfg), _frames(cfg)
    for a, b in zip(with_kind, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(plain, with_kind))
    for r in with_kind:
        assert r.dtype == np.float32 and r.min() >= 0.0 and r.max() <= 1.0


def test_long_streaks_take_their_length_and_density():
    cfg = RainConfig(long_probability=1.0)
    for seed in range(10):
        fr = sample_frame_rain(np.random.default_rng(seed), cfg)
        assert cfg.long_length_range[0] <= fr.length <= cfg.long_length_range[1]
        assert cfg.long_density_range[0] <= fr.density <= cfg.long_density_range[1]
    # A long streak crosses a 128-pixel image: some column of the rain layer is rainy over > 80 rows.
    rain = render_rain_layer(128, 128, np.random.default_rng(1), RainConfig(long_probability=1.0, angle_range=(0, 0),
                                                                            angle_jitter=0.0, blur_range=(0, 0)))
    assert ((rain > 0.05).sum(axis=0)).max() > 80


@pytest.mark.parametrize("kind", ["drizzle", "near"])
def test_extra_layers_add_coverage(kind):
    plain = np.mean([rain_coverage(r) for r in _frames(RainConfig(), n=20)])
    extra = np.mean([rain_coverage(r) for r in _frames(RainConfig(**KINDS[kind]), n=20)])
    assert extra > plain


def test_near_streaks_are_soft():
    """Near-camera streaks are Gaussian-softened: their rain layer has no hard one-pixel edges."""
    cfg = RainConfig(density_range=(0.0, 0.0), near_probability=1.0, near_density_range=(3.0, 3.0),
                     near_softness_range=(3.0, 3.0))
    rain = render_rain_layer(128, 128, np.random.default_rng(2), cfg)
    assert rain.max() > 0.02
    step = max(np.abs(np.diff(rain, axis=0)).max(), np.abs(np.diff(rain, axis=1)).max())
    assert step < 0.5 * rain.max()


def test_directions_split_the_streaks():
    """Several directions share the frame's streaks: similar coverage, different pictures."""
    one = np.mean([rain_coverage(r) for r in _frames(RainConfig(), n=30)])
    three = np.mean([rain_coverage(r) for r in _frames(RainConfig(directions_range=(3, 3)), n=30)])
    assert 0.5 * one < three < 2.0 * one


def test_rain_stays_sparse_across_two_frames():
    """The time-lapse objective needs each pixel clean in at least one frame of a pair: with every kind on,
    under 8 % of pixels are rainy in both frames on average (the plain renderer: about 2 %)."""
    rng = np.random.default_rng(3)
    joint = [rain_coverage(np.minimum(render_rain_layer(96, 96, rng, VARIED_RAIN),
                                      render_rain_layer(96, 96, rng, VARIED_RAIN))) for _ in range(30)]
    assert np.mean(joint) < 0.08


def test_rain_coverage():
    rain = np.zeros((2, 4, 5), np.float32)
    rain[0, 0, :] = 0.5
    rain[1, 0, :2] = 0.04
    assert rain_coverage(rain) == pytest.approx(5 / 40)
    assert rain_coverage(rain[0], threshold=0.6) == 0.0


@pytest.mark.parametrize("bad", [
    {"directions_range": (0, 2)}, {"directions_range": (3, 2)}, {"directions_range": (1.5, 2)},
    {"long_probability": 1.5}, {"drizzle_probability": -0.1}, {"near_width_range": (0.5, 2.0)},
    {"drizzle_intensity_range": (0.2, 1.2)}, {"long_length_range": (50.0, 10.0)},
])
def test_bad_kind_settings_raise(bad):
    with pytest.raises(ValueError, match="RainConfig"):
        RainConfig(**bad)


def test_varied_heldout_set():
    assert "varied" in HELDOUT_SETS
    varied = EmbeddedPairedSet(2, rain="varied", size=64)[0]
    streaks = EmbeddedPairedSet(2, rain="streaks", size=64)[0]
    assert varied["rainy"].shape == (3, 64, 64)
    assert not np.array_equal(varied["rainy"].numpy(), streaks["rainy"].numpy())
    assert np.array_equal(varied["clean"].numpy(), streaks["clean"].numpy())  # same scenes, other rain
