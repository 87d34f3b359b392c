"""Geometric self-ensemble (`mgid.derain.self_ensemble`, ``Derainer(self_ensemble=...)``, ``--self-ensemble``).

Fake predictors check the transforms exactly; a tiny untrained MGIDNet checks the composition with padding
and tiling on odd, non-square sizes; the commands run on 21x30 images. One torch thread, seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mgid.cli as cli
from mgid.data import read_image, write_image
from mgid.derain.derainer import Derainer, load_model
from mgid.derain.self_ensemble import TRANSFORMS, dihedral, dihedral_inverse, dihedral_mean
from mgid.derain.tiling import predict_rain
from mgid.models import ModelConfig
from tests.derain import tiny_network

TINY = ModelConfig(channels=8, memory_items=4)


def _positions(h: int, w: int) -> torch.Tensor:
    """(1, 1, h, w) float32 with a distinct value per pixel (nothing symmetric about it)."""
    return torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)


def _columns(y: torch.Tensor) -> torch.Tensor:
    """The column index of every pixel of ``y`` (..., h, w), in ``y``'s own frame: not equivariant."""
    return torch.arange(y.shape[-1], dtype=y.dtype).expand(y.shape)


@pytest.mark.parametrize("h, w", [(5, 7), (4, 4), (1, 3)])
def test_transforms_are_the_eight_elements_of_the_group_and_inverses_undo_them(h, w):
    x = _positions(h, w)
    images = []
    for k in range(TRANSFORMS):
        y = dihedral(x, k)
        assert y.shape[-2:] == ((h, w) if k % 2 == 0 else (w, h))
        assert torch.equal(dihedral_inverse(y, k), x)
        images.append(y)
    if h > 1 and w > 1:  # a 1-pixel-high image is symmetric under a vertical flip
        distinct = {tuple(y.shape) + tuple(y.flatten().tolist()) for y in images}
        assert len(distinct) == TRANSFORMS
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)
    with pytest.raises(ValueError, match="0..7"):
        dihedral_inverse(x, -1)


@pytest.mark.parametrize("h, w", [(13, 21), (16, 16)])
def test_an_equivariant_predictor_gets_its_plain_output_back_exactly(h, w):
    img = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def pointwise(y: torch.Tensor) -> torch.Tensor:  # equivariant by construction
        return torch.tanh(3 * y) * 0.37 + y * y / 7

    assert torch.equal(dihedral_mean(pointwise, img), pointwise(img))


def test_each_output_is_mapped_back_to_the_input_frame():
    """A predictor that marks the top-left pixel of what it sees: mapped back, the 8 marks land on the four
    corners of the input, two on each (each corner is the top-left of one turn, mirrored and not)."""
    h, w = 5, 8
    x = torch.zeros(1, 1, h, w)

    def mark_top_left(y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(y)
        out[..., 0, 0] = 1.0
        return out

    total = dihedral_mean(mark_top_left, x) * TRANSFORMS
    expected = torch.zeros(1, 1, h, w)
    for r, c in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        expected[..., r, c] = 2.0
    assert torch.equal(total, expected)
    # a position-dependent predictor plus the input: the input comes back in place and the column
    # indices of the 8 frames average to (H - 1 + W - 1) / 4 everywhere
    img = _positions(7, 4)
    out = dihedral_mean(lambda y: y + _columns(y), img)
    torch.testing.assert_close(out, img + (7 - 1 + 4 - 1) / 4, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    return tiny_network.tiny_weights(tmp_path_factory.mktemp("w"))


@pytest.mark.parametrize("h, w, tile", [(19, 30, None), (37, 21, None), (37, 29, 16)])
def test_derainer_averages_the_eight_predictions_for_odd_sizes_and_tiles(tiny_weights, h, w, tile):
    d = load_model(tiny_weights, "cpu", precision="fp32", channels_last=False)
    img = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1
    rain = d.rain_layer(img, tile=tile, overlap=8, self_ensemble=True)
    assert rain.shape == img.shape
    manual = torch.stack([dihedral_inverse(predict_rain(d.net, dihedral(img, k), tile, 8), k)
                          for k in range(TRANSFORMS)]).double().mean(0).float()
    torch.testing.assert_close(rain, manual, rtol=0, atol=1e-6)
    plain = d.rain_layer(img, tile=tile, overlap=8)
    assert torch.equal(plain, predict_rain(d.net, img, tile, 8))
    assert not torch.equal(rain, plain)  # the network is not equivariant (padding, strides, tile grid)
    rgb = np.random.default_rng(2).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert d.derain(rgb, tile=tile, overlap=8, self_ensemble=True).shape == (h, w, 3)


def test_default_and_per_call_override(tiny_weights):
    on = load_model(tiny_weights, "cpu", precision="fp32", self_ensemble=True)
    off = Derainer(on.net, precision="fp32")
    assert on.self_ensemble and not off.self_ensemble and "self_ensemble=True" in repr(on)
    rgb = np.random.default_rng(3).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    assert np.array_equal(on.derain(rgb), off.derain(rgb, self_ensemble=True))
    assert np.array_equal(on.derain(rgb, self_ensemble=False), off.derain(rgb))
    clean, rain = on.derain_with_rain(rgb)
    assert np.array_equal(clean, on.derain(rgb)) and np.array_equal(rain, on.rain_layer(rgb))
    with pytest.raises(TypeError, match="True or False"):
        load_model(tiny_weights, "cpu", self_ensemble="no")
    with pytest.raises(TypeError, match="True or False"):
        off.derain(rgb, self_ensemble=1)


@pytest.mark.parametrize("command", ["derain", "evaluate", "heldout"])
def test_flag_is_in_the_help(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert "--self-ensemble" in capsys.readouterr().out


def test_commands_with_the_flag_on_tiny_images(tiny_weights, tmp_path, capsys):
    rgb = np.random.default_rng(4).integers(0, 256, (21, 30, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / "a.png", rgb)
    common = ["--weights", str(tiny_weights), "--device", "cpu", "--precision", "fp32", "--self-ensemble"]
    assert cli.main(["derain", str(tmp_path / "in"), str(tmp_path / "out"), *common, "--quiet"]) == 0
    assert "self-ensemble of 8 flips/turns" in capsys.readouterr().out
    expected = load_model(tiny_weights, "cpu", precision="fp32", self_ensemble=True).derain(rgb)
    assert np.array_equal(read_image(tmp_path / "out" / "a.png"), expected)
    # mgid evaluate --data: a rain/ + norain/ pair
    write_image(tmp_path / "set" / "rain" / "rain-1.png", rgb)
    write_image(tmp_path / "set" / "norain" / "norain-1.png", np.full_like(rgb, 90))
    assert cli.main(["evaluate", "--data", str(tmp_path / "set"), "--out", str(tmp_path / "ev"), *common,
                     "--quiet"]) == 0
    assert np.array_equal(read_image(tmp_path / "ev" / "derained" / "rain-1.png"), expected)
    assert "self-ensemble" in capsys.readouterr().err
    assert cli.main(["evaluate", "--pred", str(tmp_path / "out"), "--gt", str(tmp_path / "out"),
                     "--self-ensemble"]) == 2
    assert "--self-ensemble apply to --data only" in capsys.readouterr().err
    # mgid heldout: one image per set, recorded in the JSON
    assert cli.main(["heldout", *common, "--count", "1", "--no-baselines", "--out", str(tmp_path / "ho")]) == 0
    assert json.loads((tmp_path / "ho" / "heldout.json").read_text())["self_ensemble"] is True
