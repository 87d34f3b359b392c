"""The embedded time-lapse set (`mgid.data.embedded`), held-out paired sets and the synthetic export.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mgid.data import (
    EmbeddedDataConfig,
    EmbeddedPairedSet,
    EmbeddedTimeLapse,
    PairedFolder,
    TimeLapseFolder,
    list_images,
    make_dataset,
    read_image,
    write_synthetic_dataset,
)
from mgid.data.heldout_sets import HELDOUT_SETS, heldout_folder
from mgid.data.photos import PHOTO_GROUPS
from tests.data.builders import (
    PURE_RAIN,
    SMALL,
)


@pytest.fixture(scope="module")
def train_set():
    return EmbeddedTimeLapse("train", config=SMALL, crop_size=32, seed=1)


def test_embedded_pairs_shape_range_and_difference(train_set):
    assert len(train_set) == len(train_set.scenes) * SMALL.frames_per_scene
    item = train_set[5]
    assert set(item) == {"frame1", "frame2", "scene"}
    for k in ("frame1", "frame2"):
        assert item[k].shape == (3, 32, 32) and item[k].dtype == torch.float32
        assert item[k].min() >= -1.0 and item[k].max() <= 1.0
    assert isinstance(item["scene"], str) and item["scene"] == train_set.scenes[5 // SMALL.frames_per_scene].name
    assert not torch.equal(item["frame1"], item["frame2"])  # different rain
    # ... but the same background: the frames are far closer to each other than to another scene
    other = train_set[len(train_set) - 1]
    same = (item["frame1"] - item["frame2"]).abs().median()
    diff = (item["frame1"] - other["frame1"]).abs().median()
    assert same < 0.15 and same < diff / 2


def test_embedded_frames_are_background_plus_rain():
    ds = EmbeddedTimeLapse("train", config=EmbeddedDataConfig(size=32, frames_per_scene=3, rain=PURE_RAIN,
                                                              train_scenes_per_photo=1), seed=0)
    bg = ds.scene_background(2).astype(np.int16)
    f0, r0 = ds.render_frame(2, 0)
    f1, r1 = ds.render_frame(2, 1)
    assert not np.array_equal(f0, f1) and not np.array_equal(r0, r1)
    dry = (r0 == 0) & (r1 == 0)
    np.testing.assert_array_equal(f0[dry], bg[dry])
    np.testing.assert_array_equal(f1[dry], bg[dry])
    assert (f0.astype(np.int16) >= bg).all()


def test_embedded_deterministic_and_epochs(train_set):
    again = EmbeddedTimeLapse("train", config=SMALL, crop_size=32, seed=1)
    a, b = train_set[3], again[3]
    assert torch.equal(a["frame1"], b["frame1"]) and torch.equal(a["frame2"], b["frame2"])
    other_seed = EmbeddedTimeLapse("train", config=SMALL, crop_size=32, seed=2)[3]
    assert not torch.equal(a["frame1"], other_seed["frame1"])
    crops = []
    for epoch in range(4):
        again.set_epoch(epoch)
        crops.append(again[3]["frame1"])
    assert any(not torch.equal(crops[0], c) for c in crops[1:])
    again.set_epoch(0)
    assert torch.equal(again[3]["frame1"], a["frame1"])


def test_embedded_splits_are_disjoint(train_set):
    val = EmbeddedTimeLapse("val", config=SMALL, seed=1)
    assert set(train_set.photos).isdisjoint(val.photos)
    groups = lambda photos: {PHOTO_GROUPS.get(p, p) for p in photos}  # noqa: E731
    assert groups(train_set.photos).isdisjoint(groups(val.photos))
    assert {s.photo for s in val.scenes} <= set(val.photos)
    assert {s.photo for s in train_set.scenes} <= set(train_set.photos)
    assert val[0]["frame1"].shape == (3, SMALL.size, SMALL.size)
    with pytest.raises(ValueError, match="crop_size"):
        EmbeddedTimeLapse("train", config=SMALL, crop_size=SMALL.size + 1)
    with pytest.raises(ValueError, match="split"):
        EmbeddedTimeLapse("test", config=SMALL)


def test_embedded_paired_set():
    ps = EmbeddedPairedSet(n=3, seed=0, size=32)
    assert len(ps) == 3
    item = ps[1]
    assert item["name"] == "002"
    assert item["rainy"].shape == item["clean"].shape == (3, 32, 32)
    assert not torch.equal(item["rainy"], item["clean"])
    assert torch.equal(EmbeddedPairedSet(n=3, seed=0, size=32)[1]["rainy"], item["rainy"])
    val_photos = set(EmbeddedTimeLapse("val", config=SMALL).photos)
    assert {s.photo for s in ps.scenes} <= val_photos


def test_write_synthetic_dataset(tmp_path):
    cfg = EmbeddedDataConfig(size=32, frames_per_scene=2, train_scenes_per_photo=1, val_scenes_per_photo=1)
    out = tmp_path / "synth"
    summary = write_synthetic_dataset(out, config=cfg, seed=0, paired_count=2)
    assert summary["files"] == (summary["train_scenes"] + summary["val_scenes"]) * 2 + len(HELDOUT_SETS) * 2 * 2
    train_dirs = sorted(p for p in (out / "train").iterdir())
    assert len(train_dirs) == summary["train_scenes"]
    assert [p.name for p in list_images(train_dirs[0])] == ["000.png", "001.png"]
    assert len(list(Path(out / "val").iterdir())) == summary["val_scenes"]
    assert sorted(p.name for p in (out / "paired" / "rain").iterdir()) == ["rain-001.png", "rain-002.png"]
    assert sorted(p.name for p in (out / "paired" / "norain").iterdir()) == ["norain-001.png", "norain-002.png"]
    # the files hold exactly what the in-memory data set renders
    ds = EmbeddedTimeLapse("train", config=cfg, seed=0)
    np.testing.assert_array_equal(read_image(out / "train" / ds.scenes[0].name / "001.png"), ds.render_frame(0, 1)[0])
    # and read back as scene folders, per split
    back = make_dataset(out, "val", crop_size=16, seed=0)
    assert isinstance(back, TimeLapseFolder) and back.layout == "scenes"
    assert back[0]["frame1"].shape == (3, 16, 16)
    for kind in HELDOUT_SETS:  # every held-out set, as the in-memory set renders it
        folder = out / heldout_folder(kind)
        assert len(PairedFolder(folder)) == 2
        np.testing.assert_array_equal(read_image(folder / "rain" / "rain-002.png"),
                                      EmbeddedPairedSet(2, config=cfg, rain=kind).images(1)[0])
    with pytest.raises(FileExistsError, match="synth"):
        write_synthetic_dataset(out, config=cfg)
    write_synthetic_dataset(out, config=cfg, overwrite=True)
