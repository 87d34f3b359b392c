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
