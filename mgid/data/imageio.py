"""Image reading and writing, and the conversion between images and network tensors.

Conventions used everywhere in `mgid.data`:

* An image on the host is a NumPy array of shape HxWx3, dtype uint8, channel order **RGB**.
  Greyscale files are expanded to 3 equal channels; an alpha channel is dropped; 16-bit files
  are reduced to 8 bits (OpenCV's ``IMREAD_COLOR`` does all three).
* A network input is a float32 tensor of shape (3, H, W) in [-1, 1], computed as ``x / 127.5 - 1``
  of the RGB uint8 image. The public MGID code fed BGR (as OpenCV reads it); we feed RGB. For a model
  trained from scratch the channel order makes no difference, but weights converted from the public
  code expect BGR input (swap channels 0 and 2 first).

Files are read through ``numpy.fromfile`` + ``cv2.imdecode`` rather than ``cv2.imread`` so that
paths with non-ASCII characters work on every platform and a missing file can be told apart from an
unreadable one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch

#: File suffixes (lower case, with the dot) treated as images; everything else in a folder is ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | Path


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: Permissions of written images: what a plain ``open(path, 'wb')`` gives (mkstemp alone gives 0600).
_FILE_MODE = _umask_mode()


def is_image_file(path: PathLike) -> bool:
    """True if ``path`` has an image suffix and is not a hidden file.

    Hidden files (``.DS_Store``, the ``._name.png`` resource forks macOS leaves in archives) are
    skipped: they often carry an image suffix without being images.
    """
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: PathLike, recursive: bool = False) -> list[Path]:
    """Sorted list of the image files in ``folder`` (by suffix, see `IMAGE_SUFFIXES`).

    With ``recursive=True`` sub-folders are searched too. Raises ``FileNotFoundError`` if the
    folder does not exist and ``NotADirectoryError`` if it is a file.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    entries: Iterable[Path] = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in entries if p.is_file() and is_image_file(p))


def _not_readable(path: Path, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(
        f"{path} is not a readable image{extra}; remove it from the folder or replace it with a valid "
        f"image ({', '.join(s[1:] for s in IMAGE_SUFFIXES)})"
    )


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB.

    Raises ``FileNotFoundError`` (naming the path) if the file does not exist and ``ValueError``
    (naming the file) if it exists but cannot be decoded as an image (corrupt, truncated, not an image).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise _not_readable(p, "empty file")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as exc:  # some codecs raise instead of returning None
        raise _not_readable(p, str(exc).strip().splitlines()[-1]) from exc
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.size == 0:
        raise _not_readable(p)
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, reading only its header where possible.

    Used to validate large folders at construction time without decoding every pixel. Pillow (a
    dependency of scikit-image) parses the header lazily; if it is missing, or cannot identify the
    format, the file is decoded fully with OpenCV instead. Raises like `read_image`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        from PIL import Image  # header-only parse: microseconds per file
    except ImportError:  # pragma: no cover - Pillow comes with scikit-image
        Image = None  # type: ignore[assignment]
    if Image is not None:
        try:
            with Image.open(p) as im:
                w, h = im.size
            if h > 0 and w > 0:
                return int(h), int(w)
        except Exception:  # noqa: BLE001 - unknown to Pillow: let OpenCV decide below
            pass
    img = read_image(p)
    return int(img.shape[0]), int(img.shape[1])


def write_image(path: PathLike, rgb: np.ndarray) -> Path:
    """Write an HxWx3 (or HxW) uint8 RGB image; the format follows the suffix of ``path``.

    Parent folders are created. The file is written atomically: the encoded bytes go to a hidden
    temporary file beside ``path`` that is then renamed over it, so a failed write (disk full, an
    interrupted run) leaves no partial image under the final name (and an existing file intact).
    Returns the path written.
    """
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"cannot write {p}: unknown image suffix {p.suffix!r} (use one of {IMAGE_SUFFIXES})")
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8:
        raise TypeError(f"write_image expects uint8 pixels, got {arr.dtype} (use to_uint8 first)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim != 2:
        raise ValueError(f"write_image expects HxWx3 or HxW pixels, got shape {arr.shape}")
    ok, buf = cv2.imencode(p.suffix.lower(), arr)
    if not ok:
        raise ValueError(f"OpenCV could not encode {p}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> float32 tensor (3, H, W) in [-1, 1], computed as ``x / 127.5 - 1``."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"to_tensor expects an HxWx3 uint8 image, got {arr.dtype} {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    return t / 127.5 - 1.0


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Float tensor (3, H, W) in [-1, 1] -> HxWx3 uint8 RGB: ``(x + 1) * 127.5``, rounded, clipped."""
    t = tensor.detach()
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"to_uint8 expects a (3, H, W) tensor, got shape {tuple(t.shape)}")
    arr = ((t.to(torch.float32).cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return arr.permute(1, 2, 0).contiguous().numpy()
