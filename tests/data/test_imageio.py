"""Image I/O (`mgid.data.imageio`): reading, writing, listing, tensors, bad files.

All images are tiny and generated into tmp_path (`tests.data.builders`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mgid.data import (
    image_size,
    list_images,
    read_image,
    to_tensor,
    to_uint8,
    write_image,
)
from tests.data.builders import (
    pattern,
)


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
