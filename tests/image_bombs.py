"""Hostile image files for tests: PNGs whose header claims far more pixels than their few kilobytes hold."""
from __future__ import annotations

import struct
import zlib

#: PNG colour types: channels per pixel.
_CHANNELS = {0: 1, 2: 3, 6: 4}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A complete, valid PNG of ``width`` x ``height`` black pixels. At the default 1-bit grey a row is
    ``width / 8`` zero bytes, which zlib packs about a thousandfold: 15000x15000 (225 MP) is ~27 KB, and any
    decoder expands it to 8-bit colour (675 MB) before the network's float copies (several GB). Colour type
    2 (RGB) or 6 (RGBA) with ``bit_depth`` 8 or 16 gives the bigger bombs of colour images."""
    row_bytes = -(-width * _CHANNELS[colour_type] * bit_depth // 8)
    packer = zlib.compressobj(9)
    row = bytes(1 + row_bytes)  # filter byte 0 + the row
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
