"""An image file's EXIF and ICC colour profile: read from its header, and put into encoded JPEG/PNG/WebP bytes.

`read_metadata` reads them (no pixel decoded) with the EXIF orientation; `upright` turns pixels upright by that
orientation; `embed_metadata` puts an `ImageMetadata` into the bytes OpenCV encoded. Metadata never makes a
readable image unreadable. Used by `mgid.data.imageio`; details: docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgid.errors import InputError

#: Suffixes whose files `mgid.data.imageio.write_image` gives the EXIF and ICC profile of an `ImageMetadata`.
METADATA_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class ImageMetadata:
    """An image file's EXIF and ICC colour profile, as `mgid.data.imageio.read_photo` reads them and
    `mgid.data.imageio.write_image` writes them.

    ``exif``: the EXIF block as a TIFF structure (starting ``II*\\0`` or ``MM\\0*``, without JPEG's ``Exif\\0\\0``
    prefix) that describes the pixels as `read_photo` returns them, upright: its Orientation, if any, is 1.
    ``icc_profile``: the ICC profile's bytes. Either is None when the file has none.
    """

    exif: bytes | None = None
    icc_profile: bytes | None = None


#: Pillow format names (`mgid.data.image_header`) whose EXIF and ICC profile `mgid.data.imageio.read_photo` reads.
METADATA_FORMATS = ("JPEG", "PNG", "WEBP")
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
_ORIENTATION_TAG, _SHORT = 0x0112, 3
#: An ICC profile's data colour space (header bytes 16-19) for RGB pixels.
_RGB_PROFILE = b"RGB "
#: EXIF orientation -> the change that turns the stored pixels upright (EXIF 2.3, tag 0x0112).
_UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirror left-right
    3: lambda a: a[::-1, ::-1],  # turn 180 degrees
    4: lambda a: a[::-1],  # mirror top-bottom
    5: lambda a: a.swapaxes(0, 1),  # transpose
    6: lambda a: np.rot90(a, -1),  # turn 90 degrees clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transverse
    8: lambda a: np.rot90(a, 1),  # turn 90 degrees anticlockwise
}


def _orientation_at(tiff: bytes) -> int | None:
    """Offset in an EXIF TIFF structure of the value of its first directory's Orientation tag (a SHORT), or None
    when there is none (or the structure cannot be read)."""
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for k in range(count):
            at = ifd + 2 + 12 * k
            tag, kind, n, _ = struct.unpack_from(order + "HHIH", tiff, at)
            if tag == _ORIENTATION_TAG:
                return at + 8 if kind == _SHORT and n == 1 else None
    except struct.error:
        return None
    return None


def read_metadata(path: str | Path, fmt: str) -> tuple[ImageMetadata | None, int]:
    """Read the EXIF and ICC profile of an image file from its header.

    Read by Pillow's parser for format ``fmt`` (no pixel decoded, no size limit: `mgid.data.image_header`). The
    EXIF comes back with its Orientation set to 1; an ICC profile that is not an RGB one (grey, CMYK) is left out,
    as it would misdescribe the RGB pixels mgid writes.

    Args:
        path: the image file.
        fmt: its Pillow format name (`mgid.data.image_header.ImageHeader.format`); only those in
            `METADATA_FORMATS` are read.

    Returns:
        ``(metadata, orientation)``: the file's `ImageMetadata` (None when it has neither EXIF nor an RGB ICC
        profile) and the EXIF orientation (1 to 8) its pixels are to be turned by with `upright`. ``(None, 1)``
        for other formats and for metadata that cannot be read (nothing is raised): metadata never makes a
        readable image unreadable.
    """
    if fmt not in METADATA_FORMATS:
        return None, 1
    from PIL import Image

    Image.init()
    try:
        with open(path, "rb") as f:
            info = Image.OPEN[fmt][0](f, "").info
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for odd headers that OpenCV may still decode
        return None, 1
    exif, icc, orientation = info.get("exif") or None, info.get("icc_profile") or None, 1
    if icc is not None and icc[16:20] != _RGB_PROFILE:
        icc = None  # a grey or CMYK profile would misdescribe the RGB pixels mgid writes
    if exif is not None:
        exif = bytearray(exif.removeprefix(_EXIF_PREFIX))
        if exif[:4] not in _TIFF_MAGIC:
            exif = None
        elif (at := _orientation_at(exif)) is not None:
            order = "little" if exif[:2] == b"II" else "big"
            orientation = int.from_bytes(exif[at:at + 2], order)
            exif[at:at + 2] = (1).to_bytes(2, order)  # the pixels are turned upright on read
    if exif is None and icc is None:
        return None, 1
    return ImageMetadata(None if exif is None else bytes(exif), icc), orientation if orientation in _UPRIGHT else 1


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels upright by their EXIF orientation (EXIF 2.3, tag 0x0112).

    Args:
        pixels: HxW or HxWxC pixels as stored in the file.
        orientation: the EXIF orientation, 1 to 8, as `read_metadata` returns it.

    Returns:
        The pixels upright: a view of ``pixels`` (turned or mirrored), or ``pixels`` itself for orientation 1 or
        any value outside 2 to 8.
    """
    if orientation in _UPRIGHT:
        return _UPRIGHT[orientation](pixels)
    return pixels


#: Bytes of data a JPEG marker segment holds (its 16-bit length counts itself); of ICC profile per APP2 segment.
_JPEG_SEGMENT, _ICC_PER_SEGMENT = 0xFFFF - 2, 0xFFFF - 2 - 14


def _jpeg_segment(marker: int, payload: bytes, what: str) -> bytes:
    if len(payload) > _JPEG_SEGMENT:
        raise InputError(f"{what} of {len(payload)} bytes does not fit a JPEG segment ({_JPEG_SEGMENT} bytes)")
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) & 1)


def embed_metadata(suffix: str, data: bytes, metadata: ImageMetadata, size: tuple[int, int], alpha: bool) -> bytes:
    """Add an `ImageMetadata`'s EXIF and ICC profile to an encoded JPEG, PNG or WebP file, where each format keeps them.

    The encoded pixels are left as they are: PNG gets iCCP and eXIf chunks after IHDR; WebP becomes the extended
    format (VP8X, ICCP, the image chunks, EXIF); JPEG gets APP1 (EXIF) and APP2 (ICC profile) segments after SOI
    and the JFIF APP0 segment.

    Args:
        suffix: the file's suffix, lower case with the dot: one of `METADATA_SUFFIXES` (anything other than
            ``.png`` and ``.webp`` is taken as JPEG).
        data: the file's bytes as OpenCV encodes them.
        metadata: the EXIF and ICC profile to add (either may be None).
        size: the image's (height, width).
        alpha: True when the image has an alpha channel.

    Returns:
        The file's bytes with the metadata.

    Raises:
        ValueError: metadata too large for a JPEG (an EXIF over one 64 KB segment, an ICC profile over 255).
    """
    exif, icc = metadata.exif, metadata.icc_profile
    if suffix == ".png":  # after the signature and IHDR (iCCP must precede PLTE and IDAT; eXIf is read there)
        at = 8 + 12 + struct.unpack_from(">I", data, 8)[0]
        added = (_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)) if icc else b"") + (
            _png_chunk(b"eXIf", exif) if exif else b"")
        return data[:at] + added + data[at:]
    if suffix == ".webp":  # the extended format: VP8X (flags, canvas size), ICCP, the image chunks, EXIF
        chunks, flags, at = [], 0x10 if alpha else 0, 12
        while at + 8 <= len(data):
            kind, n = data[at:at + 4], struct.unpack_from("<I", data, at + 4)[0]
            if kind == b"VP8X":
                flags |= data[at + 8]
            elif kind not in (b"ICCP", b"EXIF"):
                chunks.append(data[at:at + 8 + n + (n & 1)])
            at += 8 + n + (n & 1)
        flags |= (0x20 if icc else 0) | (0x08 if exif else 0)
        h, w = size
        vp8x = _riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little"))
        body = b"WEBP" + vp8x + (_riff_chunk(b"ICCP", icc) if icc else b"") + b"".join(chunks) + (
            _riff_chunk(b"EXIF", exif) if exif else b"")
        return b"RIFF" + struct.pack("<I", len(body)) + body
    # JPEG: after SOI and the JFIF APP0 segment (which comes first), as cameras and Pillow write them
    segments = [_jpeg_segment(0xE1, _EXIF_PREFIX + exif, "EXIF")] if exif else []
    if icc:
        parts = [icc[k:k + _ICC_PER_SEGMENT] for k in range(0, len(icc), _ICC_PER_SEGMENT)]
        if len(parts) > 255:
            raise InputError(f"an ICC profile of {len(icc)} bytes does not fit a JPEG (255 segments)")
        segments += [_jpeg_segment(0xE2, b"ICC_PROFILE\x00" + bytes([k + 1, len(parts)]) + part, "ICC profile")
                     for k, part in enumerate(parts)]
    at = 2
    while data[at:at + 2] == b"\xff\xe0":
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return data[:at] + b"".join(segments) + data[at:]
