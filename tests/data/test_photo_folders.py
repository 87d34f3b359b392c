"""Tests of folders of clean photos as backgrounds (`mgid.data.photo_folders`) and their use by the embedded data."""
from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from mgid.data import EmbeddedDataConfig, EmbeddedTimeLapse, make_dataset, write_image
from mgid.data.photo_folders import PhotoFolders, heldout_photos
from mgid.data.stream import StreamingTimeLapse

from .builders import pattern

SHARED_PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "photos"


def make_photo_folder(root: Path, n: int = 4, hw: tuple[int, int] = (60, 80), sub: str = "") -> Path:
    """``n`` small colour photos (PNG, JPEG, a grey PNG and a 16-bit TIFF among them) under ``root/sub``."""
    folder = root / sub if sub else root
    for i in range(n):
        img = pattern(*hw, seed=100 + i)
        kind = i % 4
        if kind == 0:
            write_image(folder / f"p{i}.png", img)
        elif kind == 1:
            write_image(folder / f"p{i}.jpg", img)
        elif kind == 2:
            write_image(folder / f"p{i}.png", img[..., 0])  # grey
        else:
            write_image(folder / f"p{i}.tif", img.astype(np.uint16) * 257)  # 16 bit
    return root


def test_reads_every_kind_recursively_as_rgb_uint8(tmp_path):
    make_photo_folder(tmp_path, n=4, sub="a")
    make_photo_folder(tmp_path, n=4, sub="b/c")
    pf = PhotoFolders([tmp_path])
    assert len(pf) == 8
    for i in range(len(pf)):
        img, j = pf.load(i)
        assert j == i and img.dtype == np.uint8 and img.shape == (60, 80, 3)
        assert not img.flags.writeable
    grey = pf.load(next(i for i, e in enumerate(pf.entries) if e.path.name == "p2.png"))[0]
    assert np.array_equal(grey[..., 0], grey[..., 1])
    tif = pf.load(next(i for i, e in enumerate(pf.entries) if e.path.suffix == ".tif"))[0]
    assert np.array_equal(tif, pattern(60, 80, seed=103))  # 16 bit read back exactly as 8 bit


def test_photos_are_downscaled_to_the_bound_and_cached_within_it(tmp_path):
    make_photo_folder(tmp_path, n=4, hw=(100, 200))
    pf = PhotoFolders([tmp_path], max_side=50, cache_mb=2 * 25 * 50 * 3 / (1 << 20))  # room for two photos
    for i in range(4):
        assert pf.load(i)[0].shape == (25, 50, 3)
    assert len(pf._cache) == 2 and pf._cache_bytes <= pf._cache_limit
    assert list(pf._cache) == [pf.entries[2].path, pf.entries[3].path]  # least recently used went first


def test_missing_empty_and_file_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        PhotoFolders([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="no images .* found in .*empty"):
        PhotoFolders([tmp_path / "empty"])
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        PhotoFolders([tmp_path / "f.png"])


def test_unreadable_and_small_files_are_skipped_counted_and_warned_once(tmp_path):
    make_photo_folder(tmp_path, n=2)
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    write_image(tmp_path / "tiny.png", pattern(10, 40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pf = PhotoFolders([tmp_path], min_side=32)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert any("2 of 5 files" in m and "not readable" in m and "bad.jpg" in m for m in messages)
    assert any("1 of 5 photos" in m and "smaller than 32" in m and "tiny.png" in m for m in messages)
    assert (len(pf), pf.skipped_unreadable, pf.skipped_small) == (2, 2, 1)


def test_a_photo_corrupt_past_its_header_is_skipped_when_decoded(tmp_path):
    make_photo_folder(tmp_path, n=2)
    good = cv2.imencode(".png", pattern(60, 80))[1].tobytes()
    (tmp_path / "p0.png").write_bytes(good[:80])  # the header survives, the pixels do not
    pf = PhotoFolders([tmp_path])
    first = next(i for i, e in enumerate(pf.entries) if e.path.name == "p0.png")
    with pytest.warns(UserWarning, match="cannot be decoded"):
        img, used = pf.load(first)
    assert used != first and img.shape == (60, 80, 3) and pf.unreadable == {tmp_path / "p0.png"}


def test_nothing_usable_says_what_was_found(tmp_path):
    write_image(tmp_path / "tiny.png", pattern(10, 10))
    with pytest.raises(ValueError, match="no usable train photos .*: 1 image files, 0 held out, 0 unreadable, 1 smaller than 64"), \
            pytest.warns(UserWarning):
        PhotoFolders([tmp_path], min_side=64)


def test_heldout_rule_depends_on_names_only_and_never_meets_training(tmp_path):
    make_photo_folder(tmp_path, n=8, sub="x")
    make_photo_folder(tmp_path, n=6, sub="y")
    files = sorted(tmp_path.rglob("*.*"))
    held = heldout_photos(files, 2)
    assert len(held) == 4 and {p.parent.name for p in held} == {"x", "y"}
    assert heldout_photos(list(reversed(files)), 2) == held  # the listing order does not matter
    extra = files + [tmp_path / "x" / "zz_new.png"]
    assert held <= heldout_photos(extra, 2) | {tmp_path / "x" / "zz_new.png"}
    train = {e.path for e in PhotoFolders([tmp_path], heldout_per_folder=2).entries}
    test = {e.path for e in PhotoFolders([tmp_path], split="heldout", heldout_per_folder=2).entries}
    assert test == held and not train & test and len(train) == 10


def test_pickled_copy_for_spawned_workers_loads_the_same(tmp_path):
    make_photo_folder(tmp_path, n=2)
    pf = PhotoFolders([tmp_path])
    pf.load(0)
    copy = pickle.loads(pickle.dumps(pf))
    assert not copy._cache and np.array_equal(copy.load(1)[0], pf.load(1)[0])


# --- in the embedded data --------------------------------------------------------------------------

def test_config_checks_shares():
    with pytest.raises(ValueError, match="one share per photo folder"):
        EmbeddedDataConfig(photo_folders=("a", "b"), photo_folder_shares=(0.5,))
    with pytest.raises(ValueError, match="sum to at most 1"):
        EmbeddedDataConfig(photo_folders=("a", "b"), photo_folder_shares=(0.6, 0.6))
    assert EmbeddedDataConfig(photo_folders=("a", "b")).folder_shares() == (0.375, 0.375)
    assert EmbeddedDataConfig().folder_shares() == ()


def test_stream_draws_folder_backgrounds_with_their_share(tmp_path):
    make_photo_folder(tmp_path / "f", n=4)
    cfg = EmbeddedDataConfig(pairs_per_epoch=60, photo_folders=(str(tmp_path / "f"),), photo_folder_shares=(0.5,),
                             photo_heldout_per_folder=1)
    ds = StreamingTimeLapse(config=cfg, crop_size=32)
    sources = [ds.render(i)[3] for i in range(len(ds))]
    from_folder = [s for s in sources if s.startswith("f/")]
    assert 15 <= len(from_folder) <= 45  # 30 expected
    held = {e.path.name for e in PhotoFolders([tmp_path / "f"], split="heldout", heldout_per_folder=1).entries}
    assert not {s.split("/")[1] for s in from_folder} & held
    item = ds[0]
    assert item["frame1"].shape == (3, 32, 32) and item["frame1"].dtype == torch.float32


def test_without_folders_the_stream_is_unchanged():
    a = StreamingTimeLapse(config=EmbeddedDataConfig(pairs_per_epoch=4), crop_size=32)
    b = StreamingTimeLapse(config=dataclasses.replace(EmbeddedDataConfig(pairs_per_epoch=4), photo_folders=()),
                           crop_size=32)
    assert all(np.array_equal(a.render(i)[0], b.render(i)[0]) for i in range(4))


def test_scene_mode_cuts_scenes_from_folder_photos(tmp_path):
    make_photo_folder(tmp_path / "mine", n=3)
    cfg = EmbeddedDataConfig(mode="scenes", size=48, frames_per_scene=2, train_scenes_per_photo=1,
                             val_scenes_per_photo=1, photo_folders=(str(tmp_path / "mine"),),
                             photo_heldout_per_folder=1)
    train = make_dataset(None, "train", crop_size=32, embedded=cfg)
    val = EmbeddedTimeLapse("val", config=cfg)
    assert isinstance(train, EmbeddedTimeLapse)
    folder_scenes = [s.name for s in train.scenes if s.name.startswith("mine_")]
    assert len(folder_scenes) == 2 and len([s for s in val.scenes if s.name.startswith("mine_")]) == 1
    k = next(i for i, s in enumerate(train.scenes) if s.name.startswith("mine_"))
    assert train.scene_background(k).shape == (48, 48, 3)


def test_crop_larger_than_every_photo_is_refused(tmp_path):
    make_photo_folder(tmp_path, n=2, hw=(20, 30))
    cfg = EmbeddedDataConfig(photo_folders=(str(tmp_path),), photo_heldout_per_folder=0)
    with pytest.raises(ValueError, match="smaller than 32"), pytest.warns(UserWarning):
        StreamingTimeLapse(config=cfg, crop_size=32)


@pytest.mark.skipif(not SHARED_PHOTOS.is_dir(), reason=f"no shared photo collection at {SHARED_PHOTOS}")
def test_shared_photo_collection_splits_ten_per_folder():
    held = PhotoFolders([SHARED_PHOTOS], split="heldout", heldout_per_folder=10)
    train = PhotoFolders([SHARED_PHOTOS], split="train", heldout_per_folder=10)
    assert len(held) == 20 and len(train) == 160
    assert {e.path.parent.name for e in held.entries} == {"sun80", "urban100"}


def test_synth_writes_folder_scenes_in_the_official_pair_layout(tmp_path, capsys):
    from mgid.cli import main as cli_main
    from mgid.data import TimeLapseFolder, read_image

    make_photo_folder(tmp_path / "mine", n=3)
    out = tmp_path / "synth"
    argv = ["data", "synth", "--out", str(out), "--layout", "mgid", "--size", "32",
            "--frames_per_scene", "4", "--train_scenes_per_photo", "1",
            "--val_scenes_per_photo", "1", "--paired_count", "1",
            "--photo_folders", str(tmp_path / "mine"), "--photo_heldout_per_folder", "1"]
    assert cli_main(argv) == 0
    assert "side-by-side pairs" in capsys.readouterr().out
    pairs = sorted((out / "train").glob("mine_*.png"))
    assert len(pairs) == 2 * 2  # two training photos, one scene each, 4 frames -> 2 pairs per scene
    cfg = EmbeddedDataConfig(size=32, frames_per_scene=4, train_scenes_per_photo=1, val_scenes_per_photo=1,
                             photo_folders=(str(tmp_path / "mine"),), photo_heldout_per_folder=1)
    ds = EmbeddedTimeLapse("train", config=cfg)
    k = next(i for i, s in enumerate(ds.scenes) if f"{s.name}-1.png" == pairs[1].name)
    pair = read_image(pairs[1])
    assert pair.shape == (32, 64, 3)
    assert np.array_equal(pair[:, :32], ds.render_frame(k, 2)[0]) and np.array_equal(pair[:, 32:], ds.render_frame(k, 3)[0])
    assert len(TimeLapseFolder(out / "train", crop_size=None)) == len(list((out / "train").glob("*.png")))
    assert len(list((out / "val").glob("mine_*.png"))) == 2
