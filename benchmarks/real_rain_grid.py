#!/usr/bin/env python
"""Real rain photos before and after de-raining, as one compressed grid picture (no score: there is no clean image).

Every image of ``--photos`` (default ``../shared/benchmarks/real-12``: real rain photographs, evaluation only,
never trained or tuned on and never committed) is de-rained at its own resolution by each ``--weights`` file
(`mgid.derain.derainer.load_model`, the code behind ``mgid derain``) and shown in one row: the photo, then each
output. Each panel is the whole image, scaled to fit ``--panel`` pixels and centred on grey. The grid is written
as a JPEG of quality ``--quality`` (the pixels of the photos are not committed, only this reduced picture).

Run from the repository root: ``python -m benchmarks.real_rain_grid --weights OLD NEW --names previous new
--out docs/images/real12.jpg`` (12 photos of 300-1000 px, two weights files: about a minute on one thread).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from benchmarks import harness
from mgid.data import list_images, read_image
from mgid.derain.derainer import load_model, name_weights
from mgid.visualize import image_grid

#: The real rain photographs beside the repository (absent in a user's clone).
REAL_PHOTOS = harness.REPO.parent / "shared" / "benchmarks" / "real-12"
#: Grey of the margin around a panel's image.
PANEL_GREY = 128


def fit_panel(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` (HxWx3 uint8) scaled (area interpolation) to fit ``width`` x ``height`` and centred on grey."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    panel = np.full((height, width, 3), PANEL_GREY, np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    panel[top:top + nh, left:left + nw] = small
    return panel


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.real_rain_grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=REAL_PHOTOS, metavar="DIR",
                   help=f"folder of rain photos [default: {REAL_PHOTOS}]")
    p.add_argument("--weights", nargs="+", metavar="FILE.safetensors",
                   help="weights to show (several allowed) [default: the shipped weights]")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a column title per --weights file")
    p.add_argument("--panel", type=int, nargs=2, default=(320, 240), metavar=("W", "H"),
                   help="size of one panel [default: 320 240]")
    p.add_argument("--quality", type=int, default=80, help="JPEG quality of the grid [default: 80]")
    p.add_argument("--precision", default="fp32", help="arithmetic of the network [default: fp32]")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.jpg", help="the grid picture to write")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.photos.is_dir():
        print(f"real_rain_grid: error: no photo folder at {args.photos}; pass --photos DIR", file=sys.stderr)
        return 2
    photos = list_images(args.photos)
    if not photos:
        print(f"real_rain_grid: error: no images in {args.photos}", file=sys.stderr)
        return 2
    named = name_weights(args.weights, args.names)
    derainers = {name: load_model(w, "cpu", precision=args.precision) for name, w in named.items()}
    width, height = args.panel
    rows = []
    for path in photos:
        rgb = read_image(path)
        outputs = [d.derain(rgb) for d in derainers.values()]
        rows.append([fit_panel(img, width, height) for img in (rgb, *outputs)])
        print(f"{path.name}: {rgb.shape[1]}x{rgb.shape[0]}", file=sys.stderr)
    grid = image_grid(rows, headers=("rain photo", *derainers))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    if not ok:
        print("real_rain_grid: error: JPEG encoding failed", file=sys.stderr)
        return 1
    args.out.write_bytes(data.tobytes())
    print(f"wrote {args.out} ({len(data) / 1024:.0f} KB, {len(rows)} photos x {1 + len(derainers)} columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
