"""Paired (rainy, clean) folders (`mgid.data.paired`): pairing by name and the readers.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from mgid.data import (
    PairedFolder,
    find_pairs,
    write_image,
)
from mgid.data.paired import pair_key
from tests.data.builders import (
    pattern,
)


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
