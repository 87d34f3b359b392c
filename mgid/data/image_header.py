"""An image file's size and kind from its header, before any pixel is decoded, and the pixel limit checked on it.

`read_header` parses the header of the formats mgid reads (`HEADER_FORMATS`: PNG, JPEG, BMP, TIFF, WebP);
`check_pixels` refuses an image over a pixel limit or too small for the network (a decompression bomb is
refused before it is decoded); `check_still` refuses an animated image. Why Pillow's ``Image.open`` is not used:
docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from mgid.errors import MgidError
from mgid.models import image_size_problem

#: Pillow format names whose headers `read_header` parses: the formats `mgid.data.imageio` reads.
HEADER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
#: Readable names of `HEADER_FORMATS`, for messages.
FORMAT_NAMES = "JPEG, PNG, BMP, TIFF and WebP"
#: Formats whose header tells an animation (`ImageHeader.frames`): WebP and APNG. Not TIFF, whose page count
#: needs every page directory read (pages are often reduced copies, not frames), nor JPEG (an MPO's second
#: picture is a stereo view or a depth map).
ANIMATED_FORMATS = ("PNG", "WEBP")
#: ``mgid derain``'s pixel limit unless told otherwise (``--max-megapixels``): above the largest camera sensors
#: (100-200 MP), below the 400 MP of a 20000x20000 PNG that zlib packs into about a megabyte.
DEFAULT_MAX_PIXELS = 200_000_000


class ImageTooLargeError(MgidError, ValueError):
    """An image over the pixel limit (refused from its header, nothing decoded)."""


class ImageTooSmallError(MgidError, ValueError):
    """An image too small for the network (fewer than two 8x8 cells after padding)."""


class AnimatedImageError(MgidError, ValueError):
    """An animated image (several frames), which mgid does not read as one still image."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its format (Pillow's name), width, height, Pillow mode (``RGB``,
    ``RGBA``, ``I;16``, ...), whether it carries transparency (an alpha channel or a transparent colour) and its
    number of frames (more than 1 for an animated WebP or APNG; 1 for every other file)."""

    format: str
    width: int
    height: int
    mode: str
    has_alpha: bool
    frames: int = 1

    @property
    def pixels(self) -> int:
        """width x height."""
        return self.width * self.height


def _plugins() -> list[tuple[str, object, object]]:
    from PIL import Image

    Image.init()
    return [(name, *Image.OPEN[name]) for name in HEADER_FORMATS if name in Image.OPEN]


def read_header(source: bytes | str | Path) -> ImageHeader | None:
    """The header of an image file (its bytes, or a path), or None when none of `HEADER_FORMATS` recognises it
    (not an image, or a format mgid does not read). Decodes no pixels; never raises for bad data.
    Raises ``OSError`` only when a path cannot be opened."""
    stream = open(source, "rb") if isinstance(source, (str, Path)) else io.BytesIO(source)  # noqa: SIM115
    with stream:
        prefix = stream.read(16)
        for name, factory, accept in _plugins():
            if accept is not None and accept(prefix) is not True:
                continue  # not this format (a str is Pillow's reason why not)
            stream.seek(0)
            try:
                im = factory(stream, "")
            except Exception:  # noqa: BLE001 - a malformed header: try the next format, then give up
                header = _tiff_tags(stream, prefix) if name == "TIFF" else None
                if header is not None:
                    return header
                continue
            width, height = (int(v) for v in im.size)
            alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
            frames = max(1, int(getattr(im, "n_frames", 1) or 1)) if name in ANIMATED_FORMATS else 1
            return ImageHeader(name, width, height, im.mode, alpha, frames)
    return None


#: TIFF tags: ImageWidth, ImageLength, ExtraSamples (an alpha channel, among others).
_TIFF_WIDTH, _TIFF_HEIGHT, _TIFF_EXTRA_SAMPLES = 256, 257, 338


def _tiff_tags(stream, prefix: bytes) -> ImageHeader | None:
    """The size from a TIFF's first directory of tags, for the pixel formats Pillow has no mode for (float or
    32-bit colour, which OpenCV reads); None when the tags cannot be read."""
    from PIL import TiffImagePlugin

    try:
        tags = TiffImagePlugin.ImageFileDirectory_v2(prefix[:8])
        stream.seek(tags.next)
        tags.load(stream)
        width, height = int(tags[_TIFF_WIDTH]), int(tags[_TIFF_HEIGHT])
    except Exception:  # noqa: BLE001 - not a readable TIFF directory
        return None
    return ImageHeader("TIFF", width, height, "?", _TIFF_EXTRA_SAMPLES in tags)


def check_pixels(header: ImageHeader, name: str, max_pixels: int | None) -> None:
    """Refuse, from the header alone, an image over ``max_pixels`` (`ImageTooLargeError`; None: no limit) or too
    small for the network (`ImageTooSmallError`). ``name`` (a file name) goes into the messages."""
    if max_pixels is not None and header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {name} is {header.width} x {header.height} = {header.pixels / 1e6:.1f} megapixels, "
            f"the limit is {max_pixels / 1e6:g} (resize it first, or raise the limit)")
    problem = image_size_problem(header.height, header.width)
    if problem is not None:
        raise ImageTooSmallError(f"{name}: {problem}")


def check_still(header: ImageHeader, name: str) -> None:
    """Refuse an animated image: decoding it as one image would keep its first frame and drop the others.

    Args:
        header: the file's header (`read_header`).
        name: the file's name, for the message.

    Raises:
        AnimatedImageError: ``header.frames`` is more than 1; the message says how many frames and what to do.
    """
    if header.frames > 1:
        kind = "WebP" if header.format == "WEBP" else "PNG (APNG)" if header.format == "PNG" else header.format
        raise AnimatedImageError(
            f"{name} is an animated {kind} with {header.frames} frames; mgid reads still images (decoding this one "
            f"would keep its first frame only): extract the frames into a folder and de-rain them as a video "
            f"(mgid derain FRAMES_FOLDER OUT.mp4), or pass a still image")
