"""Tests of the streamed embedded training data, the procedural backgrounds and the fixed held-out sets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mgid.data import EmbeddedDataConfig, EmbeddedPairedSet, EmbeddedTimeLapse, RainConfig, make_dataset
from mgid.data.heldout_sets import HELDOUT_SETS
from mgid.data.procedural import DeadLeavesConfig, dead_leaves
from mgid.data.stream import StreamingTimeLapse, jitter_colours, photo_background, sample_background
from mgid.data.synthetic_rain import sample_frame_rain
from mgid.eval.metrics import psnr

CFG = EmbeddedDataConfig(pairs_per_epoch=8)


def stream(crop: int = 32, seed: int = 0, config: EmbeddedDataConfig = CFG) -> StreamingTimeLapse:
    return StreamingTimeLapse(config=config, crop_size=crop, seed=seed)


# --- the stream -----------------------------------------------------------------------------------

def test_samples_depend_only_on_seed_epoch_and_index():
    a, b = stream(), stream()
    first = a[3]
    for _ in range(2):  # other samples in between change nothing: no state is kept
        a[0], a[5]
    assert torch.equal(a[3]["frame1"], first["frame1"]) and torch.equal(b[3]["frame2"], first["frame2"])
    assert not torch.equal(a[4]["frame1"], first["frame1"])
    a.set_epoch(1)  # a new epoch brings new pairs: the data never repeats
    assert not torch.equal(a[3]["frame1"], first["frame1"])
    assert not torch.equal(stream(seed=1)[3]["frame1"], first["frame1"])


def test_pair_is_one_background_with_two_rains():
    ds = stream(crop=48)
    f1, f2, clean, source = ds.render(2)
    assert f1.shape == f2.shape == clean.shape == (48, 48, 3) and f1.dtype == np.uint8
    assert not np.array_equal(f1, f2)  # different rain
    # where neither frame has rain the two agree with the background up to the mild illumination change
    diff = np.abs(f1.astype(int) - f2.astype(int)).max(axis=2)
    quiet = diff <= np.percentile(diff, 30)
    assert np.abs(f1[quiet].astype(int) - clean[quiet].astype(int)).mean() < 12
    item = ds[2]
    assert item["frame1"].shape == (3, 48, 48) and item["frame1"].dtype == torch.float32
    assert -1.0 <= float(item["frame1"].min()) and float(item["frame1"].max()) <= 1.0
    assert item["scene"].startswith(source)


@pytest.mark.parametrize("workers", [0, 2])
def test_any_worker_count_gives_the_same_batches(workers):
    ds = stream(crop=24)
    reference = [ds[i]["frame1"] for i in range(8)]
    loader = DataLoader(ds, batch_size=4, num_workers=workers)
    got = torch.cat([b["frame1"] for b in loader])
    assert torch.equal(got, torch.stack(reference))


def test_backgrounds_never_repeat_and_mix_photos_with_procedural_scenes():
    ds = stream(crop=32, config=dataclasses.replace(CFG, pairs_per_epoch=40))
    cleans, sources = zip(*[ds.render(i)[2:] for i in range(40)])
    flat = {c.tobytes() for c in cleans}
    assert len(flat) == 40
    assert "dead-leaves" in sources and len(set(sources) - {"dead-leaves"}) >= 3
    assert not set(sources) & set(EmbeddedTimeLapse("val", config=EmbeddedDataConfig(size=32)).photos)


def test_make_dataset_streams_by_default_and_keeps_the_scene_mode():
    assert isinstance(make_dataset(None, "train", 32, embedded=CFG), StreamingTimeLapse)
    scenes = dataclasses.replace(CFG, mode="scenes", size=32, frames_per_scene=2, train_scenes_per_photo=1)
    assert isinstance(make_dataset(None, "train", 32, embedded=scenes), EmbeddedTimeLapse)
    assert isinstance(make_dataset(None, "val", 32, embedded=CFG), EmbeddedTimeLapse)
    with pytest.raises(ValueError, match="crop_size"):
        make_dataset(None, "train", None, embedded=CFG)
    with pytest.raises(ValueError, match="mode"):
        EmbeddedDataConfig(mode="video")


def test_default_rain_is_unbiased_around_the_clean_background():
    """What two frames of a scene agree on must be the clean image: no veil, illumination centred."""
    rain = RainConfig()
    assert rain.veil_probability == 0.0
    assert np.mean(rain.gain_range) == pytest.approx(1.0) and np.mean(rain.offset_range) == pytest.approx(0.0)
    # the per-pixel median over many frames of one background is the background (rain is sparse)
    ds = stream(crop=32)
    clean = ds.render(0)[2].astype(np.float32) / 255
    from mgid.data.synthetic_rain import add_rain

    rng = np.random.default_rng(0)
    frames = np.stack([add_rain(clean, rng, rain)[0] for _ in range(15)])
    median = np.median(frames, axis=0)
    assert np.abs(median - clean).mean() < 0.02
    assert abs(float(median.mean() - clean.mean())) < 0.01


def test_heavy_rain_draws_from_its_own_ranges():
    heavy = RainConfig(heavy_probability=1.0)
    for seed in range(5):
        fr = sample_frame_rain(np.random.default_rng(seed), heavy)
        assert heavy.heavy_density_range[0] <= fr.density <= heavy.heavy_density_range[1]
        assert heavy.heavy_width_range[0] <= fr.width <= heavy.heavy_width_range[1]
    # without heavy rain no coin is drawn: the random stream is the one of the original renderer
    a = sample_frame_rain(np.random.default_rng(3), RainConfig())
    b = sample_frame_rain(np.random.default_rng(3), RainConfig(heavy_density_range=(1.0, 2.0)))
    assert a == b
    with pytest.raises(ValueError, match="heavy_probability"):
        RainConfig(heavy_probability=1.5)


# --- backgrounds ------------------------------------------------------------------------------------

def test_dead_leaves_is_deterministic_textured_and_in_range():
    a = dead_leaves((40, 56), np.random.default_rng(0))
    assert a.shape == (40, 56, 3) and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, dead_leaves((40, 56), np.random.default_rng(0)))
    assert not np.array_equal(a, dead_leaves((40, 56), np.random.default_rng(1)))
    assert a.std() > 0.05  # shapes and edges, not a flat image
    grey = dead_leaves(32, np.random.default_rng(0), DeadLeavesConfig(saturation_range=(0.0, 0.0), noise_std=0.0,
                                                                      blur_probability=0.0))
    np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-6)  # saturation 0: grey
    with pytest.raises(ValueError, match="radius_range"):
        DeadLeavesConfig(radius_range=(0.5, 0.1))
    with pytest.raises(ValueError, match="size"):
        dead_leaves(0, np.random.default_rng(0))


def test_photo_background_turns_crops_and_jitters():
    photo = (np.arange(60 * 80 * 3) % 251).astype(np.uint8).reshape(60, 80, 3)
    cfg = EmbeddedDataConfig()
    for seed in range(6):  # rectangular output in every orientation, even from a small photo
        out = photo_background(photo, (24, 40), np.random.default_rng(seed), cfg)
        assert out.shape == (24, 40, 3) and out.dtype == np.float32
    img = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    assert np.array_equal(jitter_colours(img, np.random.default_rng(0), 0.0), img)
    jittered = jitter_colours(img, np.random.default_rng(0), 0.2)
    assert not np.array_equal(jittered, img) and 0.0 <= jittered.min() and jittered.max() <= 1.0
    bg, source = sample_background((16, 16), np.random.default_rng(0), dataclasses.replace(cfg, procedural_probability=1.0),
                                   ("astronaut",))
    assert source == "dead-leaves" and bg.shape == (16, 16, 3)


# --- held-out sets ------------------------------------------------------------------------------------

def test_heldout_sets_are_fixed_whatever_the_training_recipe():
    base = EmbeddedPairedSet(2, size=32)
    recipe = EmbeddedDataConfig(rain=RainConfig(density_range=(0.0, 1.0), heavy_probability=1.0))
    other = EmbeddedPairedSet(2, size=32, config=recipe)
    assert np.array_equal(base.images(1)[0], other.images(1)[0])
    assert not np.array_equal(base.images(1)[0], EmbeddedPairedSet(2, size=32, rain="heavy").images(1)[0])
    assert not np.array_equal(base.images(1)[0], EmbeddedPairedSet(2, size=32, rain="perspective").images(1)[0])
    assert np.array_equal(base.images(1)[1], EmbeddedPairedSet(2, size=32, rain="heavy").images(1)[1])  # same clean
    with pytest.raises(ValueError, match="held-out rain"):
        EmbeddedPairedSet(2, rain="snow")


def test_heldout_rain_levels():
    """The moderate sets sit at the original set's rain level (21-26 dB), the heavy one near 16 dB."""
    levels = {}
    for kind in HELDOUT_SETS:
        ps = EmbeddedPairedSet(rain=kind)
        assert len(ps) == 24 and ps.images(0)[0].shape == (128, 128, 3)
        levels[kind] = float(np.mean([psnr(*ps.images(i)) for i in range(len(ps))]))
    assert 21.0 <= levels["streaks"] <= 26.0 and 21.0 <= levels["perspective"] <= 26.0
    assert 14.5 <= levels["heavy"] <= 17.5
