"""The project's held-out evaluation: every embedded held-out set, the rainy input, two baselines and models.

For each held-out paired set (`mgid.data.heldout_sets.HELDOUT_SETS`: ``streaks``, the training renderer
at the original rain density; ``perspective``, a second renderer the model never trains on;
``heavy``, heavy rain; ``varied``, several directions, long streaks, drizzle and near-camera streaks;
``layered``, the benchmarks' kind of rain of `mgid.data.layer_rain`; and, with ``photo_folders``, one set per
folder of clean photos, named after it, of its held-out photos under the ``streaks`` rain)
the table holds, per method, the mean Y-channel PSNR / SSIM against the clean images (paper convention,
`mgid.eval.metrics`) and the mean brightness shift (mean Y of the output minus mean Y of the clean image, in
grey levels; a veil or tone change shows here). Methods:

* ``rainy input``: the rainy image itself;
* ``median 3x3``: a 3x3 median filter of the rainy image (single-frame baseline);
* ``temporal median 8``: the per-pixel median of 8 rainy frames of the same scene, each with its own
  rain of the set's renderer (a multi-frame reference: what a static camera could do with 8 frames);
* each model given: ``name -> function(HxWx3 uint8 RGB) -> HxWx3 uint8 RGB``.

Scores come from `mgid.eval.scoring.score_pairs` (the loop of ``mgid evaluate`` and of training
validation) as `mgid.eval.scoring.Scores`.
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
from mgid.eval.scoring import DerainFn, Scores, score_images
from mgid.output_paths import write_atomic

RAINY, MEDIAN3, TEMPORAL = "rainy input", "median 3x3", "temporal median 8"
#: The rain of the held-out sets made from photo folders: the training renderer at its moderate default.
PHOTO_SET_RAIN = "streaks"
#: Frames the temporal-median reference sees per scene.
TEMPORAL_FRAMES = 8


def median3x3(rainy: np.ndarray) -> np.ndarray:
    """3x3 median filter of an HxWx3 uint8 image, per channel."""
    return cv2.medianBlur(np.ascontiguousarray(rainy), 3)


def heldout_sets(sets: Iterable[str] = HELDOUT_SETS, photo_folders: Iterable[str | Path] = (), *,
                 count: int | None = None, config: EmbeddedDataConfig | None = None) -> dict[str, EmbeddedPairedSet]:
    """The held-out paired sets by name: each of ``sets`` (rain kinds on the bundled held-out photos), then one
    per photo folder, named after the folder, of its held-out photos under the ``streaks`` rain
    (`EmbeddedPairedSet` with ``photo_folder``).

    Raises:
        ValueError: two photo folders share a name, or a name of ``sets``.
    """
    named: dict[str, EmbeddedPairedSet] = {kind: EmbeddedPairedSet(count, config=config, rain=kind) for kind in sets}
    for folder in photo_folders:
        name = Path(folder).name
        if name in named:
            raise ValueError(f"two held-out sets would be named {name!r}: give photo folders with distinct names")
        named[name] = EmbeddedPairedSet(count, config=config, rain=PHOTO_SET_RAIN, photo_folder=folder)
    return named


def evaluate_heldout(models: Mapping[str, DerainFn], *, sets: Iterable[str] = HELDOUT_SETS,
                     photo_folders: Iterable[str | Path] = (), count: int | None = None,
                     config: EmbeddedDataConfig | None = None, baselines: bool = True) -> dict[str, dict[str, Scores]]:
    """``{set: {method: Scores}}`` for the rainy input, the baselines (optional) and ``models``, on every set of
    `heldout_sets` (``sets``, then one per photo folder)."""
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
