"""Fingerprint of the kernel sources in ``csrc/``, compiled into the extension and checked at import.

Standard library only: ``setup.py`` loads this file by path before ``mgid`` can be imported.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

#: The files of ``csrc/`` that make up the compiled extension.
SOURCE_PATTERNS = ("*.cpp", "*.cu", "*.h", "*.cuh")


def kernel_source_sha256(csrc: str | Path) -> str:
    """SHA-256 (hex) over the names and bytes of the kernel sources in ``csrc``, in name order.

    Args:
        csrc: the ``csrc/`` folder of a checkout.

    Returns:
        64 hex digits; the digest of nothing when the folder holds no source.
    """
    root = Path(csrc)
    digest = hashlib.sha256()
    files = sorted({p for pattern in SOURCE_PATTERNS for p in root.glob(pattern) if p.is_file()})
    for path in files:
        # CRLF checkouts (git autocrlf on Windows) build the same kernels as LF ones.
        data = path.read_bytes().replace(b"\r\n", b"\n")
        digest.update(path.name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return digest.hexdigest()
