"""Tests of mgid.data: image I/O, bundled photos, synthetic rain, time-lapse readers, paired sets.

Over 400 lines because it follows mgid.data's public surface one section per reader/set;
the sections share the tiny fixtures at the top.

All images are tiny (16-64 px) and generated into tmp_path; the embedded data set is built at a small
scene size so the whole file runs in a few seconds on a busy machine.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mgid.data import (
    EmbeddedDataConfig,
    EmbeddedPairedSet,
    EmbeddedTimeLapse,
    PairedFolder,
    RainConfig,
    TimeLapseFolder,
    add_rain,
    detect_layout,
    find_pairs,
    image_size,
    list_images,
    list_photos,
    load_photo,
    make_dataset,
    read_image,
    render_rain_layer,
    to_tensor,
    to_uint8,
    write_image,
    write_synthetic_dataset,
)
from mgid.data.heldout_sets import HELDOUT_SETS, heldout_folder
from mgid.data.pair_sampling import index_rng
from mgid.data.paired import pair_key
from mgid.data.photos import PHOTO_GROUPS
from mgid.data.synthetic_rain import sample_frame_rain

SMALL = EmbeddedDataConfig(size=48, frames_per_scene=4, train_scenes_per_photo=2, val_scenes_per_photo=2,
                           paired_count=4)
# no illumination change and no veil: a frame is exactly the screen blend of background and rain
PURE_RAIN = RainConfig(gain_range=(1.0, 1.0), offset_range=(0.0, 0.0), veil_probability=0.0)


# ----------------------------------------------------------------------------------------------- helpers


def pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A non-symmetric HxWx3 uint8 pattern in [20, 200] (so a +-50 offset never clips)."""
    return np.random.default_rng(seed).integers(20, 200, size=(h, w, 3), dtype=np.uint8)


def frame_of(base: np.ndarray, k: int) -> np.ndarray:
    """Frame k of a scene: the base plus a constant k * 10 (frames are told apart by the offset)."""
    return (base.astype(np.int16) + 10 * k).astype(np.uint8)


def offset_between(item: dict) -> float:
    """(frame2 - frame1) in grey levels, asserting it is constant: the same crop and flip for both."""
    a = to_uint8(item["frame1"]).astype(np.int16)
    b = to_uint8(item["frame2"]).astype(np.int16)
    d = b - a
    assert d.min() == d.max(), "frames were cut or flipped differently"
    return float(d.flat[0])


def make_scene_folders(root: Path, scenes: int = 3, frames: int = 4, hw=(24, 32)) -> Path:
    for s in range(scenes):
        base = pattern(*hw, seed=s)
        for k in range(frames):
            write_image(root / f"scene{s}" / f"{k:02d}.png", frame_of(base, k))
    return root


def make_flat(root: Path, scenes: int = 2, frames: int = 3, hw=(24, 32)) -> Path:
    for s in range(scenes):
        base = pattern(*hw, seed=s)
        for k in range(frames):
            write_image(root / f"my_scene{s}_{k:02d}.png", frame_of(base, k))
    return root


def make_mgid(root: Path, n: int = 3, hw=(24, 20)) -> Path:
    for i in range(n):
        base = pattern(*hw, seed=i)
        write_image(root / f"{i:04d}.png", np.concatenate([frame_of(base, 0), frame_of(base, 3)], axis=1))
    return root


# ----------------------------------------------------------------------------------------------- imageio


def test_read_write_roundtrip_and_grey(tmp_path):
    img = pattern(17, 23)
    p = write_image(tmp_path / "a" / "b" / "x.png", img)  # parent folders are created
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, img)  # RGB order preserved through OpenCV's BGR
    grey = img[..., 0]
    write_image(tmp_path / "g.png", grey)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (17, 23, 3)
    np.testing.assert_array_equal(g[..., 0], grey)
    np.testing.assert_array_equal(g[..., 1], g[..., 2])
    assert image_size(p) == (17, 23)


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(missing)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png at all")
    with pytest.raises(ValueError, match=r"bad\.png.*not a readable image"):
        read_image(bad)
    with pytest.raises(ValueError, match=r"bad\.png"):
        image_size(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg"):
        read_image(empty)


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tif").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=True)] == ["a.JPG", "b.png", "c.webp", "d.tif"]
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        list_images(tmp_path / "missing_dir")


def test_tensor_conversion():
    img = pattern(5, 7)
    img[0, 0] = [0, 127, 255]
    t = to_tensor(img)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t[0, 0, 0] == -1.0 and t[2, 0, 0] == 1.0
    np.testing.assert_array_equal(to_uint8(t), img)
    np.testing.assert_array_equal(to_uint8(torch.full((3, 2, 2), 5.0))[..., 0], 255)  # clipped
    with pytest.raises(ValueError):
        to_tensor(img.astype(np.float32))


# ----------------------------------------------------------------------------------------------- photos


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


# ----------------------------------------------------------------------------------------------- rain


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


# ----------------------------------------------------------------------------------------------- embedded


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


# ----------------------------------------------------------------------------------------------- folders


def test_scene_folder_layout(tmp_path):
    root = make_scene_folders(tmp_path / "tl")
    (root / "scene0" / "README.txt").write_text("ignored by suffix")
    ds = TimeLapseFolder(root, crop_size=16, seed=0)
    assert ds.layout == "scenes" and len(ds) == 3 * 4
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        assert item["frame1"].shape == (3, 16, 16)
        assert item["scene"] == f"scene{i // 4}"
        off = offset_between(item)  # same crop/flip; frames of one scene differ by 10 * (k2 - k1)
        assert off != 0 and off % 10 == 0
        seen.add(off)
    assert len(seen) > 2


def test_flat_layout(tmp_path):
    root = make_flat(tmp_path / "flat")
    assert detect_layout(root) == "flat"
    ds = TimeLapseFolder(root, crop_size=(8, 12))
    assert ds.layout == "flat" and [s for s, _ in ds.scenes] == ["my_scene0", "my_scene1"]
    item = ds[4]
    assert item["scene"] == "my_scene1" and item["frame1"].shape == (3, 8, 12)
    assert offset_between(item) != 0


def test_mgid_layout(tmp_path):
    root = make_mgid(tmp_path / "mgid")
    (root / "list.txt").write_text("not an image")
    assert detect_layout(root) == "mgid"
    ds = TimeLapseFolder(root, crop_size=16)
    assert ds.layout == "mgid" and len(ds) == 3
    offsets = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        offsets |= {offset_between(ds[i]) for i in range(len(ds))}
    assert offsets == {30.0, -30.0}  # the two halves, in either order, always the same crop
    full = TimeLapseFolder(root, crop_size=None, flip=False)[0]
    assert full["frame1"].shape == (3, 24, 20)


def test_crop_larger_than_frames_is_padded(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=1, frames=2, hw=(12, 10))
    item = TimeLapseFolder(root, crop_size=32)[0]
    assert item["frame1"].shape == (3, 32, 32)
    assert abs(offset_between(item)) == 10


def test_folder_rng_reproducible_and_worker_independent(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=2, frames=3)
    a, b = TimeLapseFolder(root, crop_size=8, seed=5), TimeLapseFolder(root, crop_size=8, seed=5)
    assert all(torch.equal(a[i]["frame1"], b[i]["frame1"]) for i in range(len(a)))
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["frame1"], b[i]["frame1"]) for i in range(len(a)))
    b.set_epoch(1)
    serial = [x["frame1"] for x in DataLoader(b, batch_size=2, num_workers=0)]
    parallel = [x["frame1"] for x in DataLoader(b, batch_size=2, num_workers=2)]
    assert all(torch.equal(x, y) for x, y in zip(serial, parallel))
    assert index_rng(5, 1, 3).random() == index_rng(5, 1, 3).random()


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        TimeLapseFolder(tmp_path / "does_not_exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no images.*empty"):
        TimeLapseFolder(empty)
    only_txt = tmp_path / "only_txt"
    only_txt.mkdir()
    (only_txt / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        TimeLapseFolder(only_txt)

    lonely = make_scene_folders(tmp_path / "lonely", scenes=2, frames=2)
    (lonely / "scene1" / "01.png").unlink()
    with pytest.raises(ValueError, match=r"'scene1'.*only one frame"):
        TimeLapseFolder(lonely)
    flat = make_flat(tmp_path / "flat1", scenes=1, frames=2)
    write_image(flat / "solo_00.png", pattern(24, 32))
    with pytest.raises(ValueError, match=r"'solo'.*only one frame"):
        TimeLapseFolder(flat, layout="flat")
    write_image(flat / "nounderscore.png", pattern(24, 32))
    with pytest.raises(ValueError, match="nounderscore.png"):
        TimeLapseFolder(flat, layout="flat")

    corrupt = make_scene_folders(tmp_path / "corrupt", scenes=1, frames=2)
    (corrupt / "scene0" / "07.png").write_bytes(b"\x00garbage, not a png")
    with pytest.raises(ValueError, match=r"07\.png.*not a readable image"):
        TimeLapseFolder(corrupt)

    sizes = make_scene_folders(tmp_path / "sizes", scenes=1, frames=2)
    write_image(sizes / "scene0" / "09.png", pattern(30, 32))
    with pytest.raises(ValueError, match=r"'scene0'.*24x32.*30x32"):
        TimeLapseFolder(sizes)

    odd = make_mgid(tmp_path / "odd", n=1)
    write_image(odd / "0009.png", pattern(20, 41))
    with pytest.raises(ValueError, match=r"0009\.png.*odd"):
        TimeLapseFolder(odd, layout="mgid")


def test_truncated_file_raises_on_read_naming_it(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=1, frames=2, hw=(32, 32))
    p = root / "scene0" / "01.png"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    ds = TimeLapseFolder(root, crop_size=8)
    with pytest.raises(ValueError, match=r"01\.png"):
        for i in range(len(ds)):
            ds[i]


def test_make_dataset(tmp_path):
    emb = make_dataset(None, "val", crop_size=None, seed=0, embedded=SMALL)
    assert isinstance(emb, EmbeddedTimeLapse) and emb.split == "val" and not emb.flip
    root = make_scene_folders(tmp_path / "plain", scenes=1, frames=2)
    assert isinstance(make_dataset(root, "train", crop_size=8), TimeLapseFolder)
    with pytest.raises(FileNotFoundError, match="validation"):
        make_dataset(root, "val", crop_size=8)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_dataset(tmp_path / "nowhere", "train")


# ----------------------------------------------------------------------------------------------- paired


def _touch_images(folder: Path, names: list[str]) -> None:
    for n in names:
        write_image(folder / n, pattern(16, 16))


def test_find_pairs_rain100_layout_and_unmatched(tmp_path):
    _touch_images(tmp_path / "rain", ["rain-001.png", "rain-002.png", "rain-005.png"])
    _touch_images(tmp_path / "norain", ["norain-001.png", "norain-002.png", "norain-003.png"])
    res = find_pairs(tmp_path / "rain", tmp_path / "norain")
    assert [(a.name, b.name) for a, b in res.pairs] == [("rain-001.png", "norain-001.png"),
                                                         ("rain-002.png", "norain-002.png")]
    assert [p.name for p in res.unmatched_inputs] == ["rain-005.png"]
    assert [p.name for p in res.unmatched_targets] == ["norain-003.png"]
    assert not res.complete and "rain-005.png" in res.describe() and "norain-003.png" in res.describe()


def test_find_pairs_prediction_kept_rainy_name(tmp_path):
    _touch_images(tmp_path / "pred", ["rain-12.png", "rain-3.png", "7.png"])
    _touch_images(tmp_path / "gt", ["norain-12.png", "norain-003.png", "norain-7.png"])
    res = find_pairs(tmp_path / "pred", tmp_path / "gt")
    assert {(a.name, b.name) for a, b in res.pairs} == {("rain-12.png", "norain-12.png"),
                                                        ("rain-3.png", "norain-003.png"),
                                                        ("7.png", "norain-7.png")}
    assert res.complete
    assert pair_key("norain-012") == pair_key("rain-12") == pair_key("12") == 12
    assert pair_key("rain12") == 12 and pair_key("rainbow") == "rainbow" and pair_key("rain-") == "rain-"
    _touch_images(tmp_path / "pred", ["rain-012.png"])
    with pytest.raises(ValueError, match=r"rain-012\.png"):
        find_pairs(tmp_path / "pred", tmp_path / "gt")


def test_find_pairs_same_names(tmp_path):
    _touch_images(tmp_path / "input", ["a.png", "b.jpg", "c.png"])
    _touch_images(tmp_path / "target", ["a.png", "b.png", "d.png"])
    res = find_pairs(tmp_path / "input", tmp_path / "target")
    assert [(a.name, b.name) for a, b in res.pairs] == [("a.png", "a.png"), ("b.jpg", "b.png")]
    assert [p.name for p in res.unmatched_inputs] == ["c.png"]
    assert [p.name for p in res.unmatched_targets] == ["d.png"]


def test_paired_folder_layouts(tmp_path):
    r100 = tmp_path / "Rain100L"
    _touch_images(r100 / "rain", ["rain-001.png", "rain-002.png"])
    _touch_images(r100 / "norain", ["norain-001.png", "norain-002.png"])
    ds = PairedFolder(r100)
    assert len(ds) == 2
    item = ds[1]
    assert item["name"] == "rain-002" and item["rainy"].shape == item["clean"].shape == (3, 16, 16)

    it = tmp_path / "Test100"
    _touch_images(it / "input", ["1.png", "2.png", "3.png"])
    _touch_images(it / "target", ["1.png", "2.png"])
    with pytest.warns(UserWarning, match="3.png"):
        assert len(PairedFolder(it)) == 2
    with pytest.raises(ValueError, match="3.png"):
        PairedFolder(it, strict=True)

    with pytest.raises(ValueError, match=r"rain/ \+ norain/"):
        PairedFolder(tmp_path / "Test100" / "input")
    with pytest.raises(FileNotFoundError):
        PairedFolder(tmp_path / "absent")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PairedFolder(rainy_dir=r100 / "rain", clean_dir=r100 / "norain")
