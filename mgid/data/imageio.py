"""Image reading and writing, and the conversion between images and network tensors.

A host image is (H, W, 3) uint8 RGB (`read_image`, `write_image`); a network input is a (3, H, W) float32 tensor
in [-1, 1], ``x / 127.5 - 1`` (`to_tensor`, `to_uint8`, `to_pixels`). A `Photo` (`read_photo`, `write_photo`)
keeps a file's depth, alpha channel, EXIF and ICC profile for ``mgid derain``. Headers are checked before any
decode (`mgid.data.image_header`). Conventions and rationale: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from mgid.errors import InputError

from .image_header import ImageHeader, check_pixels, check_still, read_header
from .image_metadata import METADATA_FORMATS, METADATA_SUFFIXES, ImageMetadata, embed_metadata, read_metadata, upright

#: File suffixes (lower case, with the dot) treated as images; everything else in a folder is ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | Path
#: Suffixes whose files `write_image` can give 16 bits per channel.
SIXTEEN_BIT_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff")
#: JPEG quality `write_image` uses unless told otherwise: OpenCV's own default (``IMWRITE_JPEG_QUALITY``).
JPEG_QUALITY = 95


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Permissions of written images: what a plain ``open(path, 'wb')`` gives (mkstemp alone gives 0600).
_FILE_MODE = _umask_mode()


def is_image_file(path: PathLike) -> bool:
    """Whether ``path`` has an image suffix (`IMAGE_SUFFIXES`) and is not a hidden file.

    Hidden files (``.DS_Store``, the ``._name.png`` resource forks macOS leaves in archives) are
    skipped: they often carry an image suffix without being images.

    Args:
        path: a file name or path (the file is not opened).

    Returns:
        True for an image file name.
    """
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: PathLike, recursive: bool = False) -> list[Path]:
    """The image files in a folder, by suffix (see `is_image_file`).

    Args:
        folder: the folder to list.
        recursive: search sub-folders too.

    Returns:
        The paths, sorted.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        NotADirectoryError: ``folder`` is a file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    entries: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in entries if p.is_file() and is_image_file(p))


def _not_readable(path: Path, why: str = "") -> InputError:
    extra = f" ({why})" if why else ""
    return InputError(
        f"{path} is not a readable image{extra}; remove it from the folder or replace it with a valid "
        f"image ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})"
    )


def _header(p: Path, max_pixels: int | None) -> ImageHeader:
    """The checked header of existing file ``p``: an image, not animated (`check_still`), and within ``max_pixels``
    (`check_pixels`; None: any size)."""
    if p.stat().st_size == 0:
        raise _not_readable(p, "empty file")
    header = read_header(p)
    if header is None:
        raise _not_readable(p, "no image header")
    check_still(header, str(p))
    if max_pixels is not None:
        check_pixels(header, str(p), max_pixels)
    return header


def _decode(p: Path, flags: int) -> np.ndarray:
    """``cv2.imdecode`` of file ``p``; InputError naming the file when it cannot be decoded."""
    data = np.fromfile(str(p), dtype=np.uint8)
    try:
        img = cv2.imdecode(data, flags)
    except cv2.error as exc:  # some codecs raise instead of returning None
        raise _not_readable(p, str(exc).strip().splitlines()[-1]) from exc
    if img is None or img.size == 0:
        raise _not_readable(p)
    return img


def _existing(path: PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    return p


def read_image(path: PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB (grey expanded, alpha dropped, 16 bits reduced to 8).

    Args:
        path: the image file.
        max_pixels: refuse larger images (and images too small for the network) from the header, before
            decoding (`mgid.data.image_header.check_pixels`); ``None``: any size.

    Returns:
        The pixels, (H, W, 3) uint8 RGB.

    Raises:
        FileNotFoundError: the file does not exist (naming the path).
        InputError: the file cannot be decoded as an image (corrupt, truncated, not an image), naming it.
        mgid.data.image_header.AnimatedImageError: an animated WebP or APNG, refused from its header.
        mgid.data.image_header.ImageTooLargeError: over ``max_pixels``.
        mgid.data.image_header.ImageTooSmallError: with ``max_pixels``, too small for the network.
    """
    p = _existing(path)
    _header(p, max_pixels)
    bgr = _decode(p, cv2.IMREAD_COLOR)
    if bgr.ndim != 3 or bgr.shape[2] != 3:
        raise _not_readable(p)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


@dataclass
class Photo:
    """An image file's pixels as ``mgid derain`` de-rains them: ``rgb`` (H, W, 3) RGB, uint8 or uint16 (the
    file's depth); ``alpha`` (H, W) of the same dtype, or None; ``note``: how the file's pixels were changed to fit
    (e.g. a float TIFF read as 8-bit), or None; ``metadata``: the file's EXIF and ICC profile, or None."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    note: str | None = None
    metadata: ImageMetadata | None = None


def _to_depth(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """uint8/uint16 pixels unchanged; other depths (float, 32-bit) scaled to uint8, with a note saying so."""
    if img.dtype in (np.uint8, np.uint16):
        return img, None
    if img.dtype.kind == "f":
        out = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        out = (img.astype(np.float64) * 255.0 / np.iinfo(img.dtype).max + 0.5).astype(np.uint8)
    return out, f"{img.dtype} pixels, de-rained and written as 8-bit"


def read_photo(path: PathLike, max_pixels: int | None = None) -> Photo:
    """Read an image file as a `Photo`: its colour in its own depth (8 or 16 bits; other depths become 8 bits
    with a note), its transparency (an alpha channel, or a transparent colour, as an alpha channel) and its
    EXIF and ICC profile (JPEG, PNG, WebP; a grey or CMYK profile is left out, the pixels being RGB).

    Grey files become 3 equal channels. The pixels are turned upright by the EXIF orientation (JPEG, PNG, WebP;
    a TIFF's own orientation tag is left to OpenCV) and the EXIF returned says Orientation 1.

    Args:
        path: the image file.
        max_pixels: as for `read_image`.

    Returns:
        The file's `Photo`.

    Raises:
        FileNotFoundError: the file does not exist.
        InputError: the file cannot be decoded, or decodes to neither grey, 3 nor 4 channels; and the
            header errors of `read_image`.
    """
    p = _existing(path)
    header = _header(p, max_pixels)
    metadata, orientation = read_metadata(p, header.format)
    # IMREAD_UNCHANGED keeps the alpha (OpenCV gives 4 channels for every kind of PNG/TIFF/WebP transparency) and
    # ignores the EXIF orientation; IMREAD_COLOR | ANYDEPTH keeps 16 bits, and with IGNORE_ORIENTATION leaves the
    # turning to `upright` (OpenCV versions differ in which formats' EXIF they honour).
    if header.has_alpha:
        flags = cv2.IMREAD_UNCHANGED
    else:
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH
        if header.format in METADATA_FORMATS:
            flags |= cv2.IMREAD_IGNORE_ORIENTATION
    img, note = _to_depth(_decode(p, flags))
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise _not_readable(p, f"{img.shape[2] if img.ndim == 3 else 1} channels")
    img = upright(img, orientation)
    alpha = np.ascontiguousarray(img[..., 3]) if img.shape[2] == 4 else None
    rgb = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_BGR2RGB))
    return Photo(rgb, alpha, note, metadata)


def write_photo(path: PathLike, photo: Photo, jpeg_quality: int = JPEG_QUALITY) -> Path:
    """Write a `Photo` with `write_image`: its alpha back beside the colour, its metadata where the format holds it.

    Args:
        path: the file to write; the format follows its suffix.
        photo: what `read_photo` returned, possibly with new ``rgb`` pixels.
        jpeg_quality: 1 to 100, for JPEG files.

    Returns:
        The path written.

    Raises:
        InputError, TypeError: as `write_image`.
    """
    pixels = photo.rgb if photo.alpha is None else np.dstack([photo.rgb, photo.alpha.astype(photo.rgb.dtype)])
    return write_image(path, pixels, photo.metadata, jpeg_quality=jpeg_quality)


def image_size(path: PathLike) -> tuple[int, int]:
    """The size of an image file from its header (`mgid.data.image_header`), decoding nothing.

    Args:
        path: the image file.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        FileNotFoundError, InputError: as `read_image`.
    """
    header = _header(_existing(path), None)
    return header.height, header.width


def write_image(path: PathLike, rgb: np.ndarray, metadata: ImageMetadata | None = None, *,
                jpeg_quality: int = JPEG_QUALITY) -> Path:
    """Write an (H, W, 3) RGB, (H, W, 4) RGBA or (H, W) grey image; the format follows the suffix of ``path``.

    Parent folders are created. The file is written atomically: the encoded bytes go to a hidden
    temporary file beside ``path`` that is then renamed over it, so a failed write (disk full, an
    interrupted run) leaves no partial image under the final name (and an existing file intact).

    Args:
        path: the file to write.
        rgb: the pixels, uint8, or uint16 for PNG and TIFF.
        metadata: EXIF and ICC profile to put into the file, written as they are (JPEG: APP1/APP2 segments,
            PNG: eXIf/iCCP chunks, WebP: EXIF/ICCP chunks); ignored for TIFF and BMP.
        jpeg_quality: 1 to 100, for ``.jpg``/``.jpeg`` files (WebP is written lossless).

    Returns:
        The path written.

    Raises:
        InputError: an unknown suffix, a shape or depth the format cannot hold, a quality outside 1 to 100,
            metadata too large for the format (an EXIF over 64 KB in a JPEG), or pixels OpenCV cannot encode
            (a ``ValueError``).
        TypeError: pixels neither uint8 nor uint16.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(f"cannot write {p}: unknown image suffix {p.suffix!r} (use one of {IMAGE_SUFFIXES})")
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise InputError(f"JPEG quality must be a whole number from 1 to 100, got {jpeg_quality!r}")
    arr = np.asarray(rgb)
    if arr.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"write_image expects uint8 or uint16 pixels, got {arr.dtype} (use to_uint8 first)")
    if arr.dtype == np.uint16 and suffix not in SIXTEEN_BIT_SUFFIXES:
        raise InputError(f"cannot write 16-bit pixels to {p}: {p.suffix} holds 8 bits (use "
                         f"{' or '.join(SIXTEEN_BIT_SUFFIXES)})")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR if arr.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    elif arr.ndim != 2:
        raise InputError(f"write_image expects HxWx3, HxWx4 or HxW pixels, got shape {arr.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, arr, params)
    if not ok:
        raise InputError(f"OpenCV could not encode {p}")
    data = buf.tobytes()
    if metadata is not None and suffix in METADATA_SUFFIXES and (metadata.exif or metadata.icc_profile):
        data = embed_metadata(suffix, data, metadata, arr.shape[:2], alpha=arr.ndim == 3 and arr.shape[2] == 4)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


#: Half the largest value of each pixel depth: ``x / HALF - 1`` maps [0, max] to [-1, 1].
_HALF = {np.dtype(np.uint8): 127.5, np.dtype(np.uint16): 32767.5}


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """Convert an image to a network tensor: ``x / 127.5 - 1`` (``x / 32767.5 - 1`` for 16 bits).

    Args:
        rgb: (H, W, 3) uint8 or uint16 RGB.

    Returns:
        A (3, H, W) float32 tensor in [-1, 1].

    Raises:
        InputError: not an (H, W, 3) uint8 or uint16 array (a ``ValueError``).
    """
    arr = np.asarray(rgb)
    if arr.dtype not in _HALF or arr.ndim != 3 or arr.shape[2] != 3:
        raise InputError(f"to_tensor expects an HxWx3 uint8 or uint16 image, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    return t.div_(_HALF[arr.dtype]).sub_(1.0)  # in place: one float copy of the image, not three


#: Rows converted at a time by `to_pixels` (its float temporary is this many rows, not the image).
_ROWS_PER_BAND = 64


def to_pixels(tensor: torch.Tensor, dtype: np.dtype | type = np.uint8, offset: float = 1.0) -> np.ndarray:
    """Convert a tensor to pixels: ``(x + offset) * 127.5`` (``* 32767.5`` for 16 bits), rounded, clipped.

    Converted a band of rows at a time into the output array, so the only temporary is a band of floats (not an
    image-sized copy).

    Args:
        tensor: (3, H, W) float.
        dtype: ``np.uint8`` or ``np.uint16``.
        offset: 1 maps an image in [-1, 1]; 0 gives a rain layer in pixel units.

    Returns:
        (H, W, 3) RGB of ``dtype``.

    Raises:
        InputError: ``tensor`` is not (3, H, W) (a ``ValueError``).
    """
    t = tensor.detach()
    if t.ndim != 3 or t.shape[0] != 3:
        raise InputError(f"to_pixels expects a (3, H, W) tensor, got shape {tuple(t.shape)}")
    half = _HALF[np.dtype(dtype)]
    h, w = t.shape[1:]
    out = np.empty((h, w, 3), dtype)
    for r0 in range(0, h, _ROWS_PER_BAND):
        band = t[:, r0:r0 + _ROWS_PER_BAND].to("cpu", torch.float32, copy=True)
        band.add_(offset).mul_(half).round_().clamp_(0, 2 * half)
        out[r0:r0 + _ROWS_PER_BAND] = band.permute(1, 2, 0).numpy()  # whole numbers in range: exact
    return out


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Convert a network tensor to an image: ``(x + 1) * 127.5``, rounded, clipped.

    Args:
        tensor: (3, H, W) float in [-1, 1].

    Returns:
        (H, W, 3) uint8 RGB.
    """
    return to_pixels(tensor, np.uint8)
