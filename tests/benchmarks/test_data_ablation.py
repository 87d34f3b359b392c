"""Tests of the issue-25 data ablation's arms (`benchmarks.data_ablation`) and the real-rain grid (`real_rain_grid`)."""
from __future__ import annotations

import argparse

import numpy as np

from benchmarks import data_ablation, real_rain_grid
from mgid.cli.train import build_parser
from mgid.config.train_config import resolve_config


def _config_of(cmd: list[str]):
    """The TrainConfig a train.py command line resolves to (without running it)."""
    from mgid.config.fields import overrides_from_args

    args = build_parser().parse_args(cmd[2:])
    return resolve_config(args.config, overrides_from_args(args))


def test_arms_differ_only_in_backgrounds_and_rain(tmp_path):
    args = argparse.Namespace(init="w.safetensors", steps=7, seed=3, runs=str(tmp_path), photos=tmp_path / "ph")
    configs = {arm: _config_of(data_ablation.train_command(arm, args)) for arm in data_ablation.ARMS}
    base = configs["embedded"]
    assert (base.max_steps, base.seed, base.init_weights, base.crop_size) == (7, 3, "w.safetensors", 128)
    assert configs["photos"].embedded.photo_folders == (str(tmp_path / "ph"),)
    assert configs["layer rain"].embedded.rain.layer_probability == data_ablation.LAYER_SHARE
    both = configs["both"]
    assert both.embedded.photo_folders and both.embedded.rain.layer_probability == data_ablation.LAYER_SHARE
    for arm, cfg in configs.items():
        same = {k: v for k, v in cfg.to_dict().items() if k not in ("embedded", "out")}
        assert same == {k: v for k, v in base.to_dict().items() if k not in ("embedded", "out")}, arm


def test_real_rain_grid_panels_keep_the_whole_image():
    wide = np.full((50, 200, 3), 255, np.uint8)
    panel = real_rain_grid.fit_panel(wide, 100, 80)
    assert panel.shape == (80, 100, 3)
    assert (panel[40, :] == 255).all() and (panel[0, :] == real_rain_grid.PANEL_GREY).all()  # letterboxed


def test_real_rain_grid_command(tmp_path, capsys):
    from mgid.data import write_image
    from tests.data.builders import pattern

    write_image(tmp_path / "rain" / "a.jpg", pattern(40, 60))
    out = tmp_path / "grid.jpg"
    assert real_rain_grid.main(["--photos", str(tmp_path / "rain"), "--panel", "64", "48", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "1 photos x 2 columns" in capsys.readouterr().out
    assert real_rain_grid.main(["--photos", str(tmp_path / "none"), "--out", str(out)]) == 2
