"""Scoring de-rained images against clean ones: per-image PSNR/SSIM, a CSV and a JSON summary.

Two ways in (both used by ``mgid evaluate``):

* `evaluate_folders` (``--pred DIR --gt DIR``): predictions already on disk. Files are paired by
  `mgid.data.find_pairs`: same stem first, then the ``rain``/``norain`` key, so a prediction that kept
  the rainy name (``rain-12.png``) pairs with ``norain-12.png``.
* `evaluate_model` (``--data DIR``): a paired set (``rain/`` + ``norain/``, or ``input/`` +
  ``target/``) is de-rained by a `mgid.api.Derainer`, then scored; the rainy input is scored too, so
  the report shows what de-raining gained.

Metrics follow `mgid.metrics` (Y channel of BT.601 by default, ``channel="rgb"`` for RGB).
Files without a partner are listed in the report; pairs that cannot be read (or differ in size)
are skipped and listed with the reason.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from mgid.data import find_pairs, read_image, write_image
from mgid.data.paired import PAIRED_LAYOUTS, detect_paired_layout
from mgid.metrics import SSIM_MIN_SIDE, Channel, score

CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"


@dataclass
class ImageScore:
    """Scores of one pair; ``psnr_input``/``ssim_input`` (rainy input vs clean) only with `evaluate_model`."""

    name: str
    target: str
    psnr: float
    ssim: float
    psnr_input: Optional[float] = None
    ssim_input: Optional[float] = None


@dataclass
class EvaluationReport:
    """Per-image scores, the files left without a partner and the pairs skipped (path, reason)."""

    channel: str
    predictions: str
    targets: str
    scores: list[ImageScore] = field(default_factory=list)
    unmatched_predictions: list[Path] = field(default_factory=list)
    unmatched_targets: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    weights: Optional[str] = None

    @property
    def with_input(self) -> bool:
        return bool(self.scores) and self.scores[0].psnr_input is not None

    def summary(self) -> dict[str, Any]:
        """Means over the scored pairs (``nan`` when none) and the counts; JSON-ready except non-finite floats."""
        def mean(key: str) -> float:
            values = [getattr(s, key) for s in self.scores]
            return float(np.mean(values)) if values else math.nan

        out: dict[str, Any] = {"channel": self.channel, "count": len(self.scores),
                               "psnr": mean("psnr"), "ssim": mean("ssim")}
        if self.with_input:
            out.update(psnr_input=mean("psnr_input"), ssim_input=mean("ssim_input"))
            out["psnr_gain"] = out["psnr"] - out["psnr_input"]
        out.update(predictions=self.predictions, targets=self.targets, weights=self.weights,
                   unmatched_predictions=[str(p) for p in self.unmatched_predictions],
                   unmatched_targets=[str(p) for p in self.unmatched_targets],
                   skipped=[{"file": str(p), "reason": r} for p, r in self.skipped])
        return out

    def describe(self) -> str:
        """A few lines for the terminal: means, count, and what was unmatched or skipped."""
        s = self.summary()
        what = "Y-channel (BT.601)" if self.channel == "y" else "RGB"
        lines = [f"{what} PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f} over {s['count']} image(s)"]
        if self.with_input:
            lines.append(f"rainy input: PSNR {s['psnr_input']:.2f} dB, SSIM {s['ssim_input']:.4f} "
                         f"(de-raining gained {s['psnr_gain']:+.2f} dB, {s['ssim'] - s['ssim_input']:+.4f} SSIM)")
        for label, files in (("predictions without a target", self.unmatched_predictions),
                             ("targets without a prediction", self.unmatched_targets)):
            if files:
                shown = ", ".join(p.name for p in files[:10]) + (" ..." if len(files) > 10 else "")
                lines.append(f"{len(files)} {label} (not scored): {shown}")
        for path, reason in self.skipped:
            lines.append(f"skipped {path}: {reason}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``OUT/metrics.csv`` (one row per pair) and ``OUT/metrics.json`` (the summary); returns both."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / CSV_NAME, out / JSON_NAME
        columns = ["name", "target", "psnr", "ssim"] + (["psnr_input", "ssim_input"] if self.with_input else [])
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for s in self.scores:
                writer.writerow([_cell(getattr(s, c)) for c in columns])
        json_path.write_text(json.dumps(_json_safe(self.summary()), indent=1) + "\n", encoding="utf-8")
        return csv_path, json_path


def _cell(value: Any) -> Any:
    return f"{value:.6f}" if isinstance(value, float) and math.isfinite(value) else value


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> "inf" / "-inf" / "nan" strings (strict JSON has no Infinity)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _score_pair(pred: np.ndarray, gt: np.ndarray, channel: Channel) -> tuple[float, float]:
    if pred.shape != gt.shape:
        raise ValueError(f"size {pred.shape[1]}x{pred.shape[0]} differs from the target's {gt.shape[1]}x{gt.shape[0]}")
    if min(gt.shape[:2]) < SSIM_MIN_SIDE:
        raise ValueError(f"smaller than the {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} SSIM window")
    return score(pred, gt, channel)


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, channel: Channel = "y",
                     progress: bool = False) -> EvaluationReport:
    """Score the images of ``pred_dir`` against their partners in ``gt_dir`` (see the module doc)."""
    pairing = find_pairs(pred_dir, gt_dir)
    report = EvaluationReport(channel, str(pred_dir), str(gt_dir),
                              unmatched_predictions=pairing.unmatched_inputs,
                              unmatched_targets=pairing.unmatched_targets)
    for pred_path, gt_path in _progress(pairing.pairs, "scoring", progress):
        try:
            p, s = _score_pair(read_image(pred_path), read_image(gt_path), channel)
        except (OSError, ValueError) as exc:
            report.skipped.append((pred_path, str(exc)))
            continue
        report.scores.append(ImageScore(pred_path.name, gt_path.name, p, s))
    return report


def paired_folders(data_dir: str | Path) -> tuple[Path, Path]:
    """(rainy, clean) sub-folders of a paired set; ``ValueError`` naming the layouts expected otherwise."""
    return detect_paired_layout(data_dir)


def evaluate_model(derainer: Any, data_dir: str | Path, channel: Channel = "y", save_dir: str | Path | None = None,
                   progress: bool = False, derain: Callable[[np.ndarray], np.ndarray] | None = None) -> EvaluationReport:
    """De-rain the rainy images of the paired set ``data_dir`` and score them (and the rainy inputs).

    ``derainer``: a `mgid.api.Derainer` (its default tiling applies); ``derain`` overrides how an
    HxWx3 uint8 image is de-rained. ``save_dir``: also write each de-rained image there under the
    rainy file's name. Layouts: ``rain/`` + ``norain/`` or ``input/`` + ``target/`` (`PAIRED_LAYOUTS`).
    """
    rainy_dir, clean_dir = paired_folders(data_dir)
    run = derain if derain is not None else derainer.derain
    pairing = find_pairs(rainy_dir, clean_dir)
    weights = getattr(derainer, "weights", None)
    report = EvaluationReport(channel, str(rainy_dir), str(clean_dir), weights=str(weights) if weights else None,
                              unmatched_predictions=pairing.unmatched_inputs,
                              unmatched_targets=pairing.unmatched_targets)
    for rainy_path, clean_path in _progress(pairing.pairs, "de-raining", progress):
        try:
            rainy, clean = read_image(rainy_path), read_image(clean_path)
            psnr_in, ssim_in = _score_pair(rainy, clean, channel)
        except (OSError, ValueError) as exc:
            report.skipped.append((rainy_path, str(exc)))
            continue
        out = run(rainy)
        if save_dir is not None:
            write_image(Path(save_dir) / rainy_path.name, out)
        p, s = _score_pair(out, clean, channel)
        report.scores.append(ImageScore(rainy_path.name, clean_path.name, p, s, psnr_in, ssim_in))
    return report


__all__ = ["CSV_NAME", "JSON_NAME", "EvaluationReport", "ImageScore", "PAIRED_LAYOUTS", "evaluate_folders",
           "evaluate_model", "paired_folders"]
