"""The project's held-out evaluation: every embedded held-out set, the rainy input, two baselines and models.

`evaluate_heldout` returns, per held-out set and method (``rainy input``, ``median 3x3``, ``temporal median 8``
and each model given), the mean Y PSNR / SSIM and brightness shift as `mgid.eval.scoring.Scores`;
`format_table` and `write_json` report it, `comparison_rows` makes the picture. The methods: docs/EVALUATE.md,
"Design notes".
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import cv2
import numpy as np

from mgid.data import EmbeddedDataConfig, EmbeddedPairedSet
from mgid.data.heldout_sets import HELDOUT_SETS
from mgid.derain.video import temporal_median
from mgid.errors import InputError
from mgid.eval.scoring import DerainFn, Scores, score_images
from mgid.output_paths import write_atomic

RAINY, MEDIAN3, TEMPORAL = "rainy input", "median 3x3", "temporal median 8"
#: The rain of the held-out sets made from photo folders: the training renderer at its moderate default.
PHOTO_SET_RAIN = "streaks"
#: Frames the temporal-median reference sees per scene.
TEMPORAL_FRAMES = 8


def median3x3(rainy: np.ndarray) -> np.ndarray:
    """3x3 median filter of an (H, W, 3) uint8 image, per channel (the single-frame baseline)."""
    return cv2.medianBlur(np.ascontiguousarray(rainy), 3)


def heldout_sets(sets: Iterable[str] = HELDOUT_SETS, photo_folders: Iterable[str | Path] = (), *,
                 count: int | None = None, config: EmbeddedDataConfig | None = None) -> dict[str, EmbeddedPairedSet]:
    """The held-out paired sets by name: each of ``sets`` (rain kinds on the bundled held-out photos), then one
    per photo folder, named after the folder, of its held-out photos under the ``streaks`` rain
    (`EmbeddedPairedSet` with ``photo_folder``).

    Args:
        sets: names of `HELDOUT_SETS` to make.
        photo_folders: folders of clean photos, one more set each.
        count: images per set (``None``: the default count).
        config: the embedded data settings (default ``EmbeddedDataConfig()``).

    Returns:
        ``{name: EmbeddedPairedSet}``, in that order.

    Raises:
        InputError: two photo folders share a name, or a name of ``sets`` (a ``ValueError``).
    """
    named: dict[str, EmbeddedPairedSet] = {kind: EmbeddedPairedSet(count, config=config, rain=kind) for kind in sets}
    for folder in photo_folders:
        name = Path(folder).name
        if name in named:
            raise InputError(f"two held-out sets would be named {name!r}: give photo folders with distinct names")
        named[name] = EmbeddedPairedSet(count, config=config, rain=PHOTO_SET_RAIN, photo_folder=folder)
    return named


def evaluate_heldout(models: Mapping[str, DerainFn], *, sets: Iterable[str] = HELDOUT_SETS,
                     photo_folders: Iterable[str | Path] = (), count: int | None = None,
                     config: EmbeddedDataConfig | None = None, baselines: bool = True) -> dict[str, dict[str, Scores]]:
    """Score the rainy input, the baselines and each model on every held-out set.

    Args:
        models: ``{name: derain}``, each (H, W, 3) uint8 RGB -> (H, W, 3) uint8 RGB.
        sets: names of `HELDOUT_SETS` to score on.
        photo_folders: folders of clean photos, one more set each (`heldout_sets`).
        count: images per set (``None``: the default count).
        config: the embedded data settings.
        baselines: also score the 3x3 median and the temporal median of 8 rainy frames.

    Returns:
        ``{set: {method: Scores}}``.

    Raises:
        InputError: as `heldout_sets` (a ``ValueError``).
    """
    table: dict[str, dict[str, Scores]] = {}
    for kind, paired in heldout_sets(sets, photo_folders, count=count, config=config).items():
        pairs = [paired.images(i) for i in range(len(paired))]
        row = {RAINY: score_images(pairs)}
        if baselines:
            row[MEDIAN3] = score_images(pairs, median3x3)
            temporal = [(temporal_median(paired.rainy_frames(i, TEMPORAL_FRAMES)), clean)
                        for i, (_, clean) in enumerate(pairs)]
            row[TEMPORAL] = score_images(temporal)
        for name, fn in models.items():
            row[name] = score_images(pairs, fn)
        table[kind] = row
    return table


def format_table(table: Mapping[str, Mapping[str, Scores]]) -> str:
    """A markdown table: one row per method, PSNR / SSIM / brightness shift per held-out set."""
    sets = list(table)
    methods = list(dict.fromkeys(m for row in table.values() for m in row))
    head = "| method | " + " | ".join(f"{s}: PSNR / SSIM / shift" for s in sets) + " |"
    lines = [head, "|---" * (len(sets) + 1) + "|"]
    for m in methods:
        cells = []
        for s in sets:
            r = table[s].get(m)
            gain = "" if r is None or m == RAINY else f" ({r.psnr - table[s][RAINY].psnr:+.2f})"
            cells.append("n/a" if r is None else f"{r.psnr:.2f}{gain} / {r.ssim:.4f} / {r.brightness_shift:+.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(table: Mapping[str, Mapping[str, Scores]], path: str | Path, **extra: object) -> Path:
    """The table (and ``extra`` fields) as JSON at ``path``, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**extra, "sets": {s: {m: r.to_dict() for m, r in row.items()} for s, row in table.items()}}
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return path


def comparison_rows(models: Mapping[str, DerainFn], *, per_set: int = 2, sets: Iterable[str] = HELDOUT_SETS,
                    photo_folders: Iterable[str | Path] = (),
                    config: EmbeddedDataConfig | None = None) -> tuple[list[list[np.ndarray]], list[str]]:
    """Rows (rainy | each model | clean) of ``per_set`` images of every held-out set (`heldout_sets`), and the
    headers."""
    rows = []
    for paired in heldout_sets(sets, photo_folders, config=config).values():
        for i in range(min(per_set, len(paired))):
            rainy, clean = paired.images(i)
            rows.append([rainy, *(fn(rainy) for fn in models.values()), clean])
    return rows, ["rainy", *models, "clean"]
