"""Time-lapse folders on disk (`mgid.data.folders`) in their three layouts, and `make_dataset`.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mgid.data import (
    EmbeddedTimeLapse,
    TimeLapseFolder,
    detect_layout,
    make_dataset,
    read_image,
    to_uint8,
    write_image,
)
from mgid.data.folders import AmbiguousLayoutError
from mgid.data.pair_sampling import index_rng
from tests.data.builders import (
    SMALL,
    frame_of,
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


# --------------------------------------------------------------------------------------------------
# the public code's cut of side-by-side pairs (pair_preprocessing="official")


def test_official_pair_preprocessing_resizes_and_keeps_the_order(tmp_path):
    """Each pair image resized to 512x256 (cv2 bilinear), left = frame 1, right = frame 2, no crop, no flip."""
    root = make_mgid(tmp_path / "mgid", n=2, hw=(24, 21))  # 24x42 images: odd halves are fine once resized
    ds = TimeLapseFolder(root, crop_size=256, pair_preprocessing="official", seed=3)
    assert ds.layout == "mgid" and ds.official and len(ds) == 2
    for i in range(len(ds)):
        resized = cv2.resize(read_image(root / f"{i:04d}.png"), (512, 256), interpolation=cv2.INTER_LINEAR)
        for epoch in range(3):  # the same frames, in the same order, every epoch
            ds.set_epoch(epoch)
            item = ds[i]
            assert item["frame1"].shape == item["frame2"].shape == (3, 256, 256)
            assert np.array_equal(to_uint8(item["frame1"]), resized[:, :256])
            assert np.array_equal(to_uint8(item["frame2"]), resized[:, 256:])
    # a 512x256 pair image is split as it is
    full = tmp_path / "full"
    base = pattern(256, 256)
    write_image(full / "0000.png", np.concatenate([base, frame_of(base, 2)], axis=1))
    item = make_dataset(full, "train", crop_size=256, pair_preprocessing="official")[0]
    assert np.array_equal(to_uint8(item["frame1"]), base) and offset_between(item) == 20.0
    assert TimeLapseFolder(full, crop_size=None, pair_preprocessing="official")[0]["frame1"].shape == (3, 256, 256)


def test_official_pair_preprocessing_errors_and_scope(tmp_path):
    root = make_mgid(tmp_path / "mgid", n=1)
    with pytest.raises(ValueError, match=r"official' gives 256x256 frames.*crop size \(16, 16\).*'crop'"):
        TimeLapseFolder(root, crop_size=16, pair_preprocessing="official")
    with pytest.raises(ValueError, match="pair_preprocessing must be one of crop, official"):
        TimeLapseFolder(root, crop_size=16, pair_preprocessing="resize")
    # the other layouts always crop: the option leaves them as they are
    scenes = make_scene_folders(tmp_path / "tl", scenes=1, frames=2)
    cropped = TimeLapseFolder(scenes, crop_size=8, pair_preprocessing="official")
    assert not cropped.official and cropped[0]["frame1"].shape == (3, 8, 8)
    assert torch.equal(cropped[1]["frame2"], TimeLapseFolder(scenes, crop_size=8)[1]["frame2"])


# --------------------------------------------------------------------------------------------------
# folders whose layout cannot be told safely are refused, saying what was found and what to pass


def refused(root, match: str) -> str:
    """detect_layout and TimeLapseFolder both refuse ``root`` with one-line message matching ``match``."""
    with pytest.raises(AmbiguousLayoutError, match=match) as err:
        detect_layout(root)
    with pytest.raises(AmbiguousLayoutError, match=match):
        TimeLapseFolder(root)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_scene_folders_one_level_too_deep_are_refused(tmp_path):
    root = tmp_path / "root"
    make_scene_folders(root / "a", scenes=3, frames=2)
    message = refused(root, r"1 sub-folder\(s\) hold 3 folder\(s\) of images \(e\.g\. a/scene0/00\.png\)")
    assert f"(e.g. {root / 'a'})" in message and "layout='scenes'" not in message
    assert TimeLapseFolder(root / "a").layout == "scenes"  # what the message says to pass
    # a data set written with splits points at its train/ folder, whatever sorts first
    split = tmp_path / "split"
    make_scene_folders(split / "train", scenes=1, frames=2)
    make_scene_folders(split / "paired", scenes=1, frames=2)
    assert f"(e.g. {split / 'train'})" in refused(split, r"2 sub-folder\(s\) hold 2 folder")


def test_scene_folder_with_image_sub_folders_is_refused(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=3, frames=2)
    write_image(root / "scene1" / "clean" / "00.png", pattern(24, 32))
    refused(root, r"hold 1 folder\(s\) of images \(e\.g\. scene1/clean/00\.png\).*layout='scenes' to read only the "
                  r"3 sub-folder\(s\) with images of their own")
    assert len(TimeLapseFolder(root, layout="scenes")) == 3 * 2  # the explicit layout reads the scene folders


def test_images_at_two_depths_are_refused(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=2, frames=2)
    write_image(root / "loose_00.png", pattern(24, 32))
    write_image(root / "loose_01.png", pattern(24, 32))
    refused(root, r"both 2 image\(s\) at its top level \(e\.g\. loose_00\.png\) and 2 sub-folder\(s\) of images "
                  r"\(e\.g\. scene0/00\.png\); pass layout='scenes'.*layout='flat' / 'mgid'")
    with pytest.warns(UserWarning, match="ignored"):
        assert TimeLapseFolder(root, layout="scenes").layout == "scenes"
    assert [s for s, _ in TimeLapseFolder(root, layout="flat").scenes] == ["loose"]


def test_sub_folders_of_side_by_side_pairs_are_refused(tmp_path):
    """A parent of MGID pair folders (e.g. train/ and test/) read as scenes would pair frames of different images."""
    root = tmp_path / "mgid_set"
    make_mgid(root / "train", n=2)
    make_mgid(root / "test", n=2)
    message = refused(root, r"2 of its 2 sub-folder\(s\) hold side-by-side pair images \(e\.g\. test/0000\.png, "
                            r"24x40 HxW\)")
    assert f"(e.g. {root / 'test'}, layout 'mgid')" in message
    assert TimeLapseFolder(root / "train").layout == "mgid"
    assert TimeLapseFolder(root, layout="scenes").layout == "scenes"  # wide scene frames, asked for


def test_images_only_deeper_are_named(tmp_path):
    root = tmp_path / "deep"
    make_scene_folders(root / "x" / "y", scenes=1, frames=2)
    with pytest.raises(ValueError, match=r"no images .*2 image\(s\) lie deeper, e\.g\. x/y/scene0/00\.png"):
        detect_layout(root)


# --------------------------------------------------------------------------------------------------
# issue 27: frames smaller than the crop are said, and a folder whose images lie deeper names the folder to pass


def test_frames_smaller_than_the_crop_are_warned_of_once_saying_what_the_padding_does(tmp_path):
    root = make_scene_folders(tmp_path / "tl", scenes=2, frames=2, hw=(20, 20))
    with pytest.warns(UserWarning) as record:
        data = TimeLapseFolder(root, crop_size=64)
    assert len(record) == 1 and str(record[0].message) == data.crop_warning
    assert data.crop_warning.startswith(f"4 of the 4 frames in {root} are smaller than the 64x64 (HxW) crop (e.g. "
                                        f"scene0/00.png: 20x20)")
    assert "mirroring" in data.crop_warning and "90%" in data.crop_warning
    assert "lower the crop size to 20 or less" in data.crop_warning
    assert data[0]["frame1"].shape == (3, 64, 64)  # what the warning says: padded, not refused
    assert TimeLapseFolder(root, crop_size=20).crop_warning is None
    # side-by-side pairs: a frame is half the image (24x20 frames of 24x40 pairs)
    pairs = make_mgid(tmp_path / "pairs", n=2)
    with pytest.warns(UserWarning, match=r"4 of the 4 frames .* 32x32 \(HxW\) crop .*24x20, the half of a side-by"):
        assert TimeLapseFolder(pairs, crop_size=32).crop_warning is not None
    assert TimeLapseFolder(pairs, crop_size=(24, 20)).crop_warning is None


def test_images_three_levels_down_name_the_folder_and_layout_to_pass(tmp_path):
    scenes = tmp_path / "scenes_deep"
    make_scene_folders(scenes / "x" / "y", scenes=2, frames=2)
    with pytest.raises(ValueError) as err:
        TimeLapseFolder(scenes)
    message = str(err.value)
    assert "found in" not in message and "\n" not in message
    assert (f"4 image(s) lie deeper, e.g. x/y/scene0/00.png: images found three levels down, 2 scene folder(s) in "
            f"{scenes / 'x' / 'y'} (layout 'scenes'") in message
    assert message.endswith(f": pass --data {scenes / 'x' / 'y'}")
    assert TimeLapseFolder(scenes / "x" / "y").layout == "scenes"  # what the message says to pass
    # side-by-side pairs three levels down: the folder of pairs itself
    pairs = tmp_path / "pairs_deep"
    make_mgid(pairs / "a" / "b" / "train", n=2)
    make_mgid(pairs / "a" / "b" / "test", n=2)
    with pytest.raises(ValueError, match=rf"side-by-side pair images in {pairs / 'a' / 'b' / 'train'} \(layout "
                                         rf"'mgid'; 2 such folders\): pass --data {pairs / 'a' / 'b' / 'train'}$"):
        TimeLapseFolder(pairs)
    # flat <scene>_<frame> files three levels down: their folder, read flat (not one scene of mixed frames)
    flat = tmp_path / "flat_deep"
    make_flat(flat / "a" / "b" / "frames")
    with pytest.raises(ValueError, match=rf"flat <scene>_<frame> files in {flat / 'a' / 'b' / 'frames'} \(layout "
                                         rf"'flat'\): pass --data {flat / 'a' / 'b' / 'frames'}$"):
        TimeLapseFolder(flat)
    assert TimeLapseFolder(flat / "a" / "b" / "frames").layout == "flat"


def test_pairs_two_levels_down_name_the_folder_of_pairs(tmp_path):
    root = tmp_path / "root"
    make_mgid(root / "x" / "pairs", n=2)
    message = refused(root, r"images found two levels down: 1 sub-folder\(s\) hold 1 folder\(s\) of side-by-side "
                            r"pair images \(e\.g\. x/pairs/0000\.png\)")
    assert message.endswith(f"e.g. --data {root / 'x' / 'pairs'} (layout 'mgid')")
    assert TimeLapseFolder(root / "x" / "pairs").layout == "mgid"


def test_the_search_below_is_bounded(tmp_path, monkeypatch):
    """Images deeper than SEARCH_DEPTH are not looked for, and no more than SEARCH_ENTRIES entries are read."""
    import mgid.data.folders as folders

    deep = tmp_path / "deep"
    make_scene_folders(deep / "a" / "b" / "c", scenes=1, frames=2)
    with pytest.raises(ValueError, match=rf"no images .* found in {deep}, its sub-folders or below them, down to "
                                         r"three levels; expected MGID pair images"):
        TimeLapseFolder(deep)
    wide = tmp_path / "wide"
    for i in range(30):
        (wide / f"empty{i:02d}" / "nothing").mkdir(parents=True)
    make_scene_folders(wide / "zz" / "y", scenes=1, frames=2)
    monkeypatch.setattr(folders, "SEARCH_ENTRIES", 20)
    with pytest.raises(ValueError, match=r"down to three levels \(the search stopped after 20 entries\)"):
        TimeLapseFolder(wide)
    monkeypatch.setattr(folders, "SEARCH_ENTRIES", 1000)
    with pytest.raises(ValueError, match=rf"pass --data {wide / 'zz' / 'y'}$"):
        TimeLapseFolder(wide)
