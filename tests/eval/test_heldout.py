"""Tests of the held-out evaluation (`mgid.eval.heldout`, `mgid heldout`): baselines, scores, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mgid.cli import main as cli_main
from mgid.data import EmbeddedDataConfig, EmbeddedPairedSet
from mgid.data.heldout_sets import HELDOUT_SETS
from mgid.derain.video import temporal_median
from mgid.eval.heldout import MEDIAN3, RAINY, TEMPORAL, evaluate_heldout, format_table, median3x3

SMALL = EmbeddedDataConfig(paired_size=32, paired_count=2)


def test_rainy_frames_are_one_scene_under_new_rain():
    ps = EmbeddedPairedSet(config=SMALL, rain="perspective")
    frames = ps.rainy_frames(1, 4)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], ps.images(1)[0])
    assert not np.array_equal(frames[1], frames[2])
    # rain only brightens: no frame is darker than the clean scene anywhere
    assert (frames.astype(int) >= ps.images(1)[1].astype(int) - 1).all()


def test_baselines_and_identity_model():
    table = evaluate_heldout({"identity": lambda x: x}, config=SMALL)
    assert list(table) == list(HELDOUT_SETS)
    for row in table.values():
        assert set(row) == {RAINY, MEDIAN3, TEMPORAL, "identity"}
        assert row["identity"] == row[RAINY]  # an identity model scores exactly the rainy input
        assert row[RAINY].count == 2 and row[RAINY].brightness_shift > 0  # rain brightens
        assert row[TEMPORAL].psnr > row[RAINY].psnr  # 8 frames of sparse rain: the median removes most
    text = format_table(table)
    assert text.count("\n") == 1 + 4 and "identity" in text and "(+0.00)" in text
    assert median3x3(np.zeros((5, 6, 3), np.uint8)).shape == (5, 6, 3)
    stack = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 200, 12)])
    assert (temporal_median(stack) == 12).all()


def test_heldout_command(tmp_path, capsys):
    out = tmp_path / "ho"
    assert cli_main(["heldout", "--count", "1", "--out", str(out), "--picture", "--picture-rows", "1",
                     "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "shipped weights" in printed and "temporal median 8" in printed
    # what auto chose and why (issue 17): the CPU model and its flags
    import mgid.precision

    info = mgid.precision.cpu_info()
    assert "mgid heldout: on cpu, " in captured.err and info.model in captured.err and "auto precision" in captured.err
    data = json.loads((out / "heldout.json").read_text())
    assert set(data["sets"]) == set(HELDOUT_SETS)
    assert data["sets"]["heavy"]["shipped weights"]["count"] == 1
    assert (out / "heldout_compare.png").is_file()


def test_heldout_command_errors(tmp_path, capsys):
    assert cli_main(["heldout", "--weights", str(tmp_path / "none.safetensors"), "--out", str(tmp_path)]) == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert cli_main(["heldout", "--names", "a", "b", "--out", str(tmp_path)]) == 2
    assert "one per file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["heldout", "--count"])


def _photo_folder(root, n=6, hw=(70, 90)):
    from mgid.data import write_image
    from tests.data.builders import pattern

    for i in range(n):
        write_image(root / f"photo{i}.png", pattern(*hw, seed=i))
    return root


def test_photo_folder_sets_use_only_its_heldout_photos_and_their_own_rain(tmp_path):
    from mgid.data.photo_folders import PhotoFolders
    from mgid.eval.heldout import heldout_sets

    folder = _photo_folder(tmp_path / "street")
    cfg = EmbeddedDataConfig(paired_size=32, paired_count=4, photo_heldout_per_folder=2)
    sets = heldout_sets(("streaks",), [folder], config=cfg)
    assert list(sets) == ["streaks", "street"]
    photo_set = sets["street"]
    held = {str(e.path) for e in PhotoFolders([folder], split="heldout", heldout_per_folder=2).entries}
    assert {s.photo for s in photo_set.scenes} == held  # both held-out photos, nothing else
    rainy, clean = photo_set.images(0)
    again = EmbeddedPairedSet(config=cfg, photo_folder=folder).images(0)
    assert np.array_equal(rainy, again[0]) and np.array_equal(clean, again[1])  # fixed by the seed
    assert rainy.shape == clean.shape == (32, 32, 3) and (rainy.astype(int) >= clean.astype(int) - 1).all()
    rain_here = rainy.astype(int) - clean.astype(int)
    bundled = sets["streaks"].images(0)
    assert not np.array_equal(rain_here, bundled[0].astype(int) - bundled[1].astype(int))  # a stream of its own
    with pytest.raises(ValueError, match="distinct names"):
        heldout_sets(("streaks",), [folder, folder], config=cfg)
    with pytest.raises(ValueError, match="photo_heldout_per_folder >= 1"):
        EmbeddedPairedSet(config=EmbeddedDataConfig(photo_heldout_per_folder=0), photo_folder=folder)


def test_heldout_command_scores_photo_folders(tmp_path, capsys):
    folder = _photo_folder(tmp_path / "mine", n=12, hw=(130, 150))  # the sets' images are 128x128
    out = tmp_path / "ho"
    assert cli_main(["heldout", "--count", "1", "--out", str(out), "--no-baselines", "--device", "cpu",
                     "--photo-folders", str(folder)]) == 0
    data = json.loads((out / "heldout.json").read_text())
    assert list(data["sets"]) == [*HELDOUT_SETS, "mine"] and data["sets"]["mine"]["shipped weights"]["count"] == 1
    assert cli_main(["heldout", "--count", "1", "--out", str(out), "--photo-folders", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err
