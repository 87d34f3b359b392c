"""Animated images (issue 27 part 4): an animated WebP or APNG is told from its header and refused, with the frame
count and what to do, wherever images are read (de-raining, training, evaluation), instead of being cut to its
first frame without a word. Still WebP and PNG files read as before."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mgid.data import TimeLapseFolder, image_size, read_image
from mgid.data.image_header import AnimatedImageError, read_header
from mgid.data.imageio import read_photo
from mgid.eval.scoring import evaluate_folders
from tests.data.builders import make_scene_folders, pattern

FRAMES = 3


def animated(path: Path, frames: int = FRAMES, hw: tuple[int, int] = (24, 32)) -> Path:
    """An animated WebP or APNG (by the suffix) of ``frames`` different frames, written with Pillow."""
    images = [Image.fromarray(pattern(*hw, seed=k)) for k in range(frames)]
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"lossless": True} if path.suffix == ".webp" else {}
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0, **kwargs)
    return path


@pytest.mark.parametrize("suffix, kind", [(".webp", "animated WebP"), (".png", "animated PNG (APNG)")])
def test_animated_images_are_refused_from_the_header(tmp_path, suffix, kind):
    path = animated(tmp_path / f"anim{suffix}")
    header = read_header(path)
    assert header is not None and header.frames == FRAMES and (header.width, header.height) == (32, 24)
    expected = re.escape(f"anim{suffix} is an {kind} with {FRAMES} frames") + ".*mgid derain FRAMES_FOLDER OUT.mp4"
    for read in (read_image, read_photo, image_size):
        with pytest.raises(AnimatedImageError, match=expected):
            read(path)
    # a still file of the same format reads as before
    still = tmp_path / f"still{suffix}"
    Image.fromarray(pattern(24, 32)).save(still, **({"lossless": True} if suffix == ".webp" else {}))
    assert read_header(still).frames == 1
    np.testing.assert_array_equal(read_image(still), pattern(24, 32))


def test_training_and_evaluation_refuse_animated_frames(tmp_path):
    """A training folder holding an animated frame is refused before training (its headers are validated when the
    data set is built); an evaluation pair with one is skipped, the reason saying it is animated."""
    root = make_scene_folders(tmp_path / "tl", scenes=2, frames=2)
    animated(root / "scene1" / "02.webp")
    with pytest.raises(ValueError, match=rf"02\.webp is an animated WebP with {FRAMES} frames"):
        TimeLapseFolder(root, crop_size=16)
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    animated(pred / "a.png")
    gt.mkdir()
    Image.fromarray(pattern(24, 32)).save(gt / "a.png")
    report = evaluate_folders(pred, gt)
    assert not report.scores and len(report.skipped) == 1
    assert f"animated PNG (APNG) with {FRAMES} frames" in report.skipped[0][1]


@pytest.mark.parametrize("suffix", [".webp", ".png"])
def test_the_web_page_refuses_an_animated_upload(tmp_path, suffix):
    from mgid.derain.web import UploadError, decode_image

    data = animated(tmp_path / f"a{suffix}").read_bytes()
    with pytest.raises(UploadError, match=f"with {FRAMES} frames") as caught:
        decode_image(data, f"a{suffix}")
    assert caught.value.status == 400


def test_an_animated_photo_in_a_photo_folder_is_skipped_at_listing_not_read_mid_training(tmp_path):
    import warnings

    from mgid.data.photo_folders import PhotoFolders

    folder = tmp_path / "photos"
    folder.mkdir()
    animated(folder / "moving.webp", hw=(96, 96))
    from mgid.data.imageio import write_image

    for i in range(2):
        write_image(folder / f"still{i}.png", np.full((96, 96, 3), 40 * (i + 1), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        photos = PhotoFolders([folder], split="all", min_side=32, heldout_per_folder=0)
    assert sorted(p.path.name for p in photos.entries) == ["still0.png", "still1.png"]
    assert any("moving.webp" in str(w.message) for w in caught)
