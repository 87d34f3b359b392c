"""``mgid derain`` on files a new user or an attacker brings (issue 19): decompression bombs refused from the
header before any decode (peak memory measured in a child), transparency and 16 bits kept, images too small for
the network and float images reported, all with one line per file and the other files done."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import mgid
import mgid.cli as cli
from mgid.data.imageio import read_photo, write_image
from tests.image_bombs import png_bomb
from tests.peak_memory import run_measured


def derain(*argv: str | Path) -> int:
    return cli.main(["derain", *map(str, argv), "--device", "cpu", "--precision", "fp32", "--quiet"])


def test_bomb_is_refused_from_its_header_and_the_folder_goes_on(tmp_path, weights):
    """A 27 KB PNG claiming 15000x15000 (225 MP, over the default 200) is skipped with a message before any
    decode; the photo beside it is de-rained. In a child process the whole command grows the RSS by less than
    300 MB (decoding the bomb alone would take 675 MB, the network's float copies several GB)."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_bomb(15000, 15000))
    assert (folder / "bomb.png").stat().st_size < 40_000
    write_image(folder / "photo.png", np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    run = run_measured(f"""
import mgid.cli as cli
mark_baseline()
code = cli.main(["derain", {str(folder)!r}, {str(tmp_path / "out")!r}, "--weights", {str(weights)!r},
                 "--device", "cpu", "--quiet"])
print("EXIT", code)
""", limit_bytes=4 << 30)
    assert "EXIT 1" in run.stdout, run.stderr[-3000:]
    assert "bomb.png: image too large" in run.stderr and "225.0 megapixels, the limit is 200" in run.stderr
    assert "Traceback" not in run.stderr
    assert (tmp_path / "out" / "photo.png").is_file() and not (tmp_path / "out" / "bomb.png").exists()
    assert run.growth < 300 << 20, f"the command grew the RSS by {run.growth / 2**20:.0f} MB"


def test_transparency_is_kept(tmp_path, weights):
    """RGBA in, RGBA out: the alpha is copied, the colour de-rained; the hidden colour under the transparent
    area (magenta here) never becomes visible."""
    rng = np.random.default_rng(1)
    rgba = np.dstack([rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), np.full((24, 32), 255, np.uint8)])
    rgba[:, :12, :3] = (255, 0, 255)
    rgba[:, :12, 3] = 0  # transparent, hiding magenta
    rgba[:, 12:16, 3] = 128
    write_image(tmp_path / "a.png", rgba)
    assert derain(tmp_path / "a.png", tmp_path / "out", "--weights", weights) == 0
    out = cv2.imread(str(tmp_path / "out" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (24, 32, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    expected = mgid.load_model(weights, "cpu", precision="fp32").derain(np.ascontiguousarray(rgba[..., :3]))
    np.testing.assert_array_equal(cv2.cvtColor(out[..., :3], cv2.COLOR_BGR2RGB), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bits_stay_sixteen_bits(tmp_path, weights, suffix):
    """A 16-bit image is de-rained at 16 bits and written at 16 bits; an 8-bit image of the same content
    (x * 257 is the same network input) gives the same result to half a grey level."""
    rgb8 = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / f"a{suffix}", rgb8.astype(np.uint16) * 257)
    write_image(tmp_path / "in8" / f"a{suffix}", rgb8)
    assert derain(tmp_path / "in", tmp_path / "out", "--weights", weights) == 0
    assert derain(tmp_path / "in8", tmp_path / "out8", "--weights", weights) == 0
    out16 = read_photo(tmp_path / "out" / f"a{suffix}").rgb
    out8 = read_photo(tmp_path / "out8" / f"a{suffix}").rgb
    assert out16.dtype == np.uint16 and out8.dtype == np.uint8
    assert np.abs(out16 / 257.0 - out8).max() <= 0.5 + 1e-6
    assert len(np.unique(out16 % 257)) > 1  # real 16-bit values, not 8-bit ones scaled


def test_too_small_and_float_images_are_reported(tmp_path, weights, capsys):
    """A 1x1 PNG is skipped with the network's size rule; a float TIFF is written as 8-bit with a note."""
    write_image(tmp_path / "in" / "dot.png", np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "in" / "f.tif"), np.random.default_rng(3).random((24, 32, 3)).astype(np.float32))
    assert derain(tmp_path / "in", tmp_path / "out", "--weights", weights) == 1
    err = capsys.readouterr().err
    assert "dot.png: image 1x1 is too small" in err and "Traceback" not in err
    assert "f.tif: float32 pixels, de-rained and written as 8-bit" in err
    assert read_photo(tmp_path / "out" / "f.tif").rgb.dtype == np.uint8


def test_pixel_limit_is_the_users(tmp_path, weights, capsys):
    write_image(tmp_path / "in" / "a.png", np.zeros((24, 32, 3), np.uint8))
    assert derain(tmp_path / "in", tmp_path / "out", "--weights", weights, "--max-megapixels", "0.0005") == 1
    assert "0.0 megapixels, the limit is 0.0005" in capsys.readouterr().err
    assert derain(tmp_path / "in", tmp_path / "out", "--weights", weights, "--max-megapixels", "0") == 0
    assert derain(tmp_path / "in", tmp_path / "x", "--weights", weights, "--max-megapixels", "-1") == 2


def test_evaluate_refuses_a_bomb_from_its_header(tmp_path, weights):
    """``mgid evaluate`` reads pairs with the same header check: a bomb among the predictions is skipped with one
    line (exit 1) before any decode, the other pair is scored, and the RSS grows by less than 300 MB."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    image = np.random.default_rng(1).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for folder in (pred, gt):
        write_image(folder / "photo.png", image)
    (pred / "bomb.png").write_bytes(png_bomb(15000, 15000))
    write_image(gt / "bomb.png", image)
    run = run_measured(f"""
import mgid.cli as cli
mark_baseline()
code = cli.main(["evaluate", "--pred", {str(pred)!r}, "--gt", {str(gt)!r}, "--out", {str(tmp_path / "scores")!r},
                 "--quiet"])
print("EXIT", code)
""", limit_bytes=4 << 30)
    assert "EXIT 1" in run.stdout, run.stderr[-3000:]
    assert "image too large" in run.stdout + run.stderr and "Traceback" not in run.stderr
    assert (tmp_path / "scores" / "metrics.json").is_file()
    assert run.growth < 300 << 20, f"the command grew the RSS by {run.growth / 2**20:.0f} MB"
    assert cli.main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "s2"),
                     "--max-megapixels", "-1"]) == 2
