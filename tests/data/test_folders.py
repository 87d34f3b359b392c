"""Time-lapse folders on disk (`mgid.data.folders`) in their three layouts, and `make_dataset`.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mgid.data import (
    EmbeddedTimeLapse,
    TimeLapseFolder,
    detect_layout,
    make_dataset,
    write_image,
)
from mgid.data.pair_sampling import index_rng
from tests.data.builders import (
    SMALL,
    make_flat,
    make_mgid,
    make_scene_folders,
    offset_between,
    pattern,
)


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
