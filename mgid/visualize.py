"""Image grids for TensorBoard and for the before/after comparison written at the end of training."""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from mgid.data import to_uint8
from mgid.errors import InputError

PAD = 2
PAD_VALUE = 255
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Column titles scale with the image width, so they read the same on a 64-px crop and on a photo:
# font scale = width / TITLE_WIDTH_PER_SCALE, clamped, with the header band and stroke following it.
TITLE_WIDTH_PER_SCALE = 400
TITLE_SCALE_RANGE = (0.35, 3.0)


def title_layout(width: int) -> tuple[float, int, int]:
    """Size the column titles over images ``width`` pixels wide.

    Args:
        width: width of one image of the grid, in pixels.

    Returns:
        (font scale, stroke thickness, header height in px): the scale is ``width / TITLE_WIDTH_PER_SCALE``
        clamped to `TITLE_SCALE_RANGE`; the thickness and the header height follow it.
    """
    lo, hi = TITLE_SCALE_RANGE
    scale = min(max(width / TITLE_WIDTH_PER_SCALE, lo), hi)
    (_, text_h), baseline = cv2.getTextSize("Ag", FONT, scale, 1)
    return scale, max(1, round(scale)), text_h + baseline + 6


def image_grid(rows: Sequence[Sequence[np.ndarray]], headers: Sequence[str] | None = None, pad: int = PAD,
               pad_value: int = PAD_VALUE) -> np.ndarray:
    """Tile images of one size into a grid, rows x columns, with optional column titles.

    Args:
        rows: the images, row by row; each (H, W, 3) uint8 RGB, all of one size, every row as long as the first.
        headers: column titles drawn in a header band above the grid (None, the default: no band).
        pad: gap between the images and around them, in pixels. Default `PAD` (2).
        pad_value: grey level of the gaps and the header band, 0-255. Default `PAD_VALUE` (255, white).

    Returns:
        (rows * (H + pad) + pad [+ header], cols * (W + pad) + pad, 3) uint8; the header height is
        `title_layout`'s.

    Raises:
        InputError: ``rows`` is empty or its first row is, a row's length differs from the first's, or an image is
            not (H, W, 3) uint8 of the first image's size.
    """
    if not rows or not rows[0]:
        raise InputError("image_grid needs at least one row with one image")
    h, w = rows[0][0].shape[:2]
    cols = len(rows[0])
    for r, row in enumerate(rows):
        if len(row) != cols:
            raise InputError(f"row {r} has {len(row)} images, row 0 has {cols}")
        for img in row:
            if img.shape != (h, w, 3) or img.dtype != np.uint8:
                raise InputError(f"every image must be {h}x{w}x3 uint8, got {img.dtype} {img.shape}")
    scale, thickness, header = title_layout(w)
    top = header if headers else 0
    grid = np.full((top + pad + len(rows) * (h + pad), pad + cols * (w + pad), 3), pad_value, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            y, x = top + pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = img
    for c, title in enumerate(headers or []):
        cv2.putText(grid, title, (pad + c * (w + pad) + 2, header - 4), FONT, scale, (0, 0, 0), thickness,
                    cv2.LINE_AA)
    return grid


def tensor_rows(*columns: torch.Tensor, max_rows: int | None = None) -> list[list[np.ndarray]]:
    """Turn batches into rows of uint8 images for `image_grid`: row i holds image i of every column.

    Args:
        *columns: batches (B, 3, H, W) float in [-1, 1], one per grid column (their B may differ).
        max_rows: at most this many rows (None, the default: as many as the shortest batch has images).

    Returns:
        min(B of every column, ``max_rows``) rows, each with one (H, W, 3) uint8 RGB image per column
        (`mgid.data.to_uint8`).
    """
    n = min(c.shape[0] for c in columns)
    n = n if max_rows is None else min(n, max_rows)
    return [[to_uint8(c[i]) for c in columns] for i in range(n)]
