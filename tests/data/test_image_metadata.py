"""EXIF orientation, EXIF and ICC profiles through `mgid.data.imageio` (`read_photo`, `write_image`), checked with
Pillow as the independent reader and writer; JPEG quality."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from mgid.data.image_metadata import ImageMetadata
from mgid.data.imageio import read_image, read_photo, write_image, write_photo
from tests.data.builders import pattern

MAKE, MODEL, ORIENTATION = 0x010F, 0x0110, 0x0112
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[MAKE], exif[MODEL], exif[ORIENTATION] = "Canon", "EOS R5", orientation
    return exif


def save(path: Path, rgb: np.ndarray, orientation: int | None = 6, icc: bytes | None = SRGB) -> Path:
    """``rgb`` (stored as is) saved by Pillow with a camera's EXIF (``orientation``; None: no EXIF) and ``icc``."""
    kwargs = {"lossless": True} if path.suffix == ".webp" else {}
    if orientation is not None:
        kwargs["exif"] = camera_exif(orientation)
    if icc is not None:
        kwargs["icc_profile"] = icc
    Image.fromarray(rgb).save(path, **kwargs)
    return path


def stored_pixels(path: Path) -> np.ndarray:
    """The pixels as the file stores them (no orientation applied), RGB."""
    bgr = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def test_orientation_6_jpeg_is_read_upright(tmp_path):
    path = save(tmp_path / "phone.jpg", pattern(24, 40))
    stored = stored_pixels(path)
    assert stored.shape == (24, 40, 3)
    upright = np.rot90(stored, -1)  # orientation 6: turn 90 degrees clockwise to show
    np.testing.assert_array_equal(read_image(path), upright)  # training and scoring (OpenCV's IMREAD_COLOR)
    photo = read_photo(path)  # mgid derain
    np.testing.assert_array_equal(photo.rgb, upright)
    exif = Image.Exif()
    exif.load(b"Exif\x00\x00" + photo.metadata.exif)
    assert exif[ORIENTATION] == 1 and exif[MAKE] == "Canon" and exif[MODEL] == "EOS R5"
    assert photo.metadata.icc_profile == SRGB


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_turned_like_pillow_does(tmp_path, suffix, orientation):
    path = save(tmp_path / f"o{suffix}", pattern(24, 40), orientation)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    if suffix == ".jpg":  # decoders round differently: compare with OpenCV's own turning of its decode
        expected = read_image(path)
    np.testing.assert_array_equal(read_photo(path).rgb, expected)


def test_transparent_png_is_turned_with_its_alpha(tmp_path):
    rgba = np.dstack([pattern(24, 40), pattern(24, 40, seed=1)[..., 0]])
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path, exif=camera_exif(8))
    photo = read_photo(path)
    np.testing.assert_array_equal(photo.rgb, np.rot90(rgba[..., :3], 1))
    np.testing.assert_array_equal(photo.alpha, np.rot90(rgba[..., 3], 1))


def _written(path: Path) -> tuple[bytes | None, Image.Exif]:
    with Image.open(path) as im:
        im.load()
        return im.info.get("icc_profile"), im.getexif()


@pytest.mark.parametrize("name,channels,dtype", [("a.jpg", 3, np.uint8), ("a.jpeg", 3, np.uint8), ("a.png", 3, np.uint8),
                                                 ("a.png", 4, np.uint8), ("a.png", 3, np.uint16),
                                                 ("a.webp", 3, np.uint8), ("a.webp", 4, np.uint8)])
def test_metadata_is_written_where_the_format_holds_it(tmp_path, name, channels, dtype):
    source = read_photo(save(tmp_path / "in.jpg", pattern(24, 40)))
    pixels = np.dstack([pattern(24, 40)] + [pattern(24, 40, seed=2)[..., :1]] * (channels - 3)).astype(dtype)
    out = write_image(tmp_path / name, pixels, source.metadata)
    icc, exif = _written(out)
    assert icc == SRGB and exif[MAKE] == "Canon" and exif[ORIENTATION] == 1
    again = read_photo(out)  # and mgid reads back what it wrote, pixels unchanged by the metadata
    assert again.metadata == source.metadata and again.rgb.dtype == dtype
    if not name.endswith((".jpg", ".jpeg")):
        np.testing.assert_array_equal(again.rgb, pixels[..., :3])
    decoded = cv2.imdecode(np.fromfile(str(out), np.uint8), cv2.IMREAD_UNCHANGED)  # OpenCV reads it too
    assert decoded.shape[:2] == (24, 40) and decoded.dtype == dtype


def test_metadata_changes_no_pixel_bytes_and_tiff_bmp_carry_none(tmp_path):
    metadata = ImageMetadata(exif=None, icc_profile=SRGB)
    rgb = pattern(24, 40)
    plain, tagged = write_image(tmp_path / "plain.png", rgb), write_image(tmp_path / "tagged.png", rgb, metadata)
    assert len(tagged.read_bytes()) > len(plain.read_bytes())
    np.testing.assert_array_equal(read_image(plain), read_image(tagged))
    for name in ("a.tif", "a.bmp"):
        out = write_image(tmp_path / name, rgb, metadata)
        np.testing.assert_array_equal(read_image(out), rgb)
        assert read_photo(out).metadata is None


def test_files_without_metadata_and_bad_exif(tmp_path):
    assert read_photo(save(tmp_path / "bare.jpg", pattern(24, 40), orientation=None, icc=None)).metadata is None
    icc_only = read_photo(save(tmp_path / "icc.png", pattern(24, 40), orientation=None))
    assert icc_only.metadata == ImageMetadata(None, SRGB)
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # not RGB: would misdescribe the pixels
    assert read_photo(save(tmp_path / "lab.png", pattern(24, 40), icc=lab)).metadata.icc_profile is None
    # an EXIF block that is not a TIFF structure is dropped; the image still reads
    path = tmp_path / "junk.jpg"
    Image.fromarray(pattern(24, 40)).save(path, exif=b"Exif\x00\x00not a tiff structure")
    photo = read_photo(path)
    assert photo.rgb.shape == (24, 40, 3) and photo.metadata is None


def test_write_photo_carries_the_photos_metadata(tmp_path):
    photo = read_photo(save(tmp_path / "in.webp", pattern(24, 40)))
    icc, exif = _written(write_photo(tmp_path / "out.webp", photo))
    assert icc == SRGB and exif[MODEL] == "EOS R5" and exif[ORIENTATION] == 1


def test_jpeg_quality(tmp_path):
    rgb = pattern(64, 64)
    low = write_image(tmp_path / "q10.jpg", rgb, jpeg_quality=10).stat().st_size
    default = write_image(tmp_path / "default.jpg", rgb).stat().st_size
    assert low < default == write_image(tmp_path / "q95.jpg", rgb, jpeg_quality=95).stat().st_size
    assert (tmp_path / "default.jpg").read_bytes() == cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()  # OpenCV's
    for bad in (0, 101, 95.0, True):
        with pytest.raises(ValueError, match="1 to 100"):
            write_image(tmp_path / "bad.jpg", rgb, jpeg_quality=bad)
