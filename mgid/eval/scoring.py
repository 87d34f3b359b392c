"""Scoring de-rained images against clean ones: the one scoring loop, its result types, CSV and JSON.

`score_pairs` is the loop every evaluation runs (one `ImageScore` per pair, `Scores` their means);
`evaluate_folders` (``mgid evaluate --pred DIR --gt DIR``), `evaluate_model` (``mgid evaluate --data DIR``) and
`score_paired_set` (training validation) feed it; `EvaluationReport` writes ``metrics.csv`` and ``metrics.json``.
Who calls what: docs/EVALUATE.md, "Design notes".
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgid.data import find_pairs, read_image, to_tensor, to_uint8, write_image
from mgid.data.paired import PAIRED_LAYOUTS, detect_paired_layout
from mgid.errors import InputError
from mgid.eval.metrics import SSIM_MIN_SIDE, Channel, rgb_to_y, score
from mgid.output_paths import OutputPathError, check_output_file, folder_problem, write_atomic

CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"
#: A de-raining function on one image: HxWx3 uint8 RGB in, HxWx3 uint8 RGB out.
DerainFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ImageScore:
    """Scores of one pair: the output against the clean image; ``psnr_input``/``ssim_input`` (rainy input
    vs clean) when the input was scored; ``brightness_shift`` (mean Y of the output minus mean Y of
    the clean image, grey levels, unrounded Y) when asked for."""

    name: str
    target: str
    psnr: float
    ssim: float
    psnr_input: float | None = None
    ssim_input: float | None = None
    brightness_shift: float | None = None


@dataclass
class Scores:
    """Means over ``count`` scored pairs (`mean_scores`): PSNR (dB) / SSIM of the output, of the rainy
    input (None when not scored) and the brightness shift (None when not measured)."""

    psnr: float
    ssim: float
    count: int
    psnr_input: float | None = None
    ssim_input: float | None = None
    brightness_shift: float | None = None

    def describe(self) -> str:
        """One line: the output's scores, and (when scored) the rainy input's and the gain."""
        text = f"de-rained {self.psnr:.2f} dB / {self.ssim:.4f}"
        if self.psnr_input is not None:
            text = (f"rainy input {self.psnr_input:.2f} dB / {self.ssim_input:.4f} -> {text} "
                    f"({self.psnr - self.psnr_input:+.2f} dB)")
        if self.brightness_shift is not None:
            text += f", brightness shift {self.brightness_shift:+.1f}"
        return f"{text} on {self.count} held-out pairs (Y-channel PSNR / SSIM)"

    def to_dict(self) -> dict[str, float]:
        """The fields that were measured: psnr, ssim, [psnr_input, ssim_input], [brightness_shift], count."""
        keys = ("psnr", "ssim", "psnr_input", "ssim_input", "brightness_shift", "count")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def mean_scores(rows: Sequence[ImageScore]) -> Scores:
    """The means of ``rows`` (``nan`` when empty); the optional fields when the first row has them."""
    def mean(key: str) -> float:
        values = [getattr(r, key) for r in rows]
        return float(np.mean(values)) if values else math.nan

    first = rows[0] if rows else ImageScore("", "", math.nan, math.nan)
    optional = {k: mean(k) if getattr(first, k) is not None else None
                for k in ("psnr_input", "ssim_input", "brightness_shift")}
    return Scores(mean("psnr"), mean("ssim"), len(rows), **optional)


@dataclass(frozen=True)
class Pair:
    """One pair to score: names for the report, ``load() -> (rainy, clean)`` HxWx3 uint8 RGB, and the
    ``source`` a skipped pair is reported under (the rainy / prediction file)."""

    name: str
    target: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    source: Any = None


def check_pair(image: np.ndarray, clean: np.ndarray) -> None:
    """Refuse two images that cannot be scored together.

    Args:
        image: (H, W, 3) uint8 RGB.
        clean: (H, W, 3) uint8 RGB.

    Raises:
        InputError: sizes differ, or smaller than the SSIM window (a ``ValueError``).
    """
    if image.shape != clean.shape:
        raise InputError(f"size {image.shape[1]}x{image.shape[0]} differs from the target's "
                         f"{clean.shape[1]}x{clean.shape[0]}")
    if min(clean.shape[:2]) < SSIM_MIN_SIDE:
        raise InputError(f"smaller than the {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE} SSIM window")


def brightness_shift(image: np.ndarray, clean: np.ndarray) -> float:
    """Mean Y (unrounded) of ``image`` minus mean Y of ``clean``, in grey levels."""
    return float(rgb_to_y(image, rounded=False).mean() - rgb_to_y(clean, rounded=False).mean())


def score_pairs(pairs: Iterable[Pair], derain: DerainFn | None = None, *, channel: Channel = "y",
                with_input: bool = False, brightness: bool = False,
                skipped: list[tuple[Any, str]] | None = None,
                on_output: Callable[[Pair, np.ndarray], None] | None = None) -> list[ImageScore]:
    """The evaluation loop: score ``derain(rainy)`` against the clean image of each pair.

    Args:
        pairs: the pairs to score.
        derain: (H, W, 3) uint8 RGB -> (H, W, 3) uint8 RGB; ``None`` scores the rainy image as loaded.
        channel: ``"y"`` or ``"rgb"`` (`mgid.eval.metrics`).
        with_input: score the rainy image too.
        brightness: measure the brightness shift.
        skipped: a pair that cannot be loaded or scored (``OSError``/``ValueError`` before de-raining) is
            appended here as ``(pair.source, reason)``; ``None`` raises instead.
        on_output: sees each pair and its output before it is scored (to save it).

    Returns:
        One `ImageScore` per scored pair.

    Raises:
        OSError, ValueError: a pair cannot be loaded or scored and ``skipped`` is None; and anything ``derain``
            raises.
    """
    rows: list[ImageScore] = []
    for pair in pairs:
        psnr_in = ssim_in = scored = None
        try:
            rainy, clean = pair.load()
            check_pair(rainy, clean)
            if with_input:
                psnr_in, ssim_in = score(rainy, clean, channel)
            if derain is None:  # the image is the output: its scores are part of reading the pair
                scored = (psnr_in, ssim_in) if with_input else score(rainy, clean, channel)
        except (OSError, ValueError) as exc:
            if skipped is None:
                raise
            skipped.append((pair.source, str(exc)))
            continue
        out = rainy if derain is None else derain(rainy)
        if on_output is not None:
            on_output(pair, out)
        if scored is None:
            check_pair(out, clean)
            scored = score(out, clean, channel)
        p, s = scored
        shift = brightness_shift(out, clean) if brightness else None
        rows.append(ImageScore(pair.name, pair.target, p, s, psnr_in, ssim_in, shift))
    return rows


def memory_pairs(images: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Pair]:
    """`Pair`s of in-memory (rainy, clean) uint8 images, named ``0``, ``1``, ..."""
    return [Pair(str(i), str(i), (lambda im=im: im)) for i, im in enumerate(images)]


def score_images(images: Sequence[tuple[np.ndarray, np.ndarray]], derain: DerainFn | None = None) -> Scores:
    """Means over in-memory (rainy, clean) uint8 pairs of ``derain(rainy)`` (None: the rainy image itself)
    against clean: Y PSNR / SSIM and the brightness shift (`mgid heldout`, the video benchmark)."""
    return mean_scores(score_pairs(memory_pairs(images), derain, brightness=True))


def dataset_pairs(paired: Any) -> list[Pair]:
    """`Pair`s of a paired dataset whose items are ``{"rainy", "clean"}`` (3, H, W) tensors in [-1, 1]."""
    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        item = paired[i]
        return to_uint8(item["rainy"]), to_uint8(item["clean"])

    return [Pair(str(i), str(i), (lambda i=i: load(i))) for i in range(len(paired))]


def net_derain_fn(net: torch.nn.Module, device: torch.device) -> DerainFn:
    """HxWx3 uint8 -> HxWx3 uint8 through a bare network's ``derain`` (fp32, whole image, memory read only,
    no gradients): the de-raining of training validation and its comparison picture."""
    @torch.no_grad()
    def run(rainy: np.ndarray) -> np.ndarray:
        return to_uint8(net.derain(to_tensor(rainy)[None].to(device))[0])

    return run


def score_paired_set(paired: Any, derain: DerainFn, channel: Channel = "y") -> Scores:
    """Mean scores of ``derain``'s output and of the rainy input against the clean images of an in-memory
    paired set (items ``{"rainy", "clean"}`` tensors in [-1, 1]); errors are raised, not skipped."""
    return mean_scores(score_pairs(dataset_pairs(paired), derain, channel=channel, with_input=True))


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
    weights: str | None = None

    @property
    def with_input(self) -> bool:
        return bool(self.scores) and self.scores[0].psnr_input is not None

    def means(self) -> Scores:
        """The mean scores over the scored pairs (`mean_scores`)."""
        return mean_scores(self.scores)

    def summary(self) -> dict[str, Any]:
        """Means over the scored pairs (``nan`` when none) and the counts; JSON-ready except non-finite floats."""
        means = self.means()
        out: dict[str, Any] = {"channel": self.channel, "count": means.count, "psnr": means.psnr, "ssim": means.ssim}
        if self.with_input:
            out.update(psnr_input=means.psnr_input, ssim_input=means.ssim_input)
            out["psnr_gain"] = out["psnr"] - out["psnr_input"]
        if means.brightness_shift is not None:
            out["brightness_shift"] = means.brightness_shift
        out.update(predictions=self.predictions, targets=self.targets, weights=self.weights,
                   unmatched_predictions=[str(p) for p in self.unmatched_predictions],
                   unmatched_targets=[str(p) for p in self.unmatched_targets],
                   skipped=[{"file": str(p), "reason": r} for p, r in self.skipped])
        return out

    def describe(self) -> str:
        """A few lines for the terminal: means and count (no such line when nothing was scored), and what was
        unmatched or skipped."""
        s = self.summary()
        what = "Y-channel (BT.601)" if self.channel == "y" else "RGB"
        lines = []
        if self.scores:
            lines.append(f"{what} PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.4f} over {s['count']} image(s)")
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

    def unscored(self) -> str:
        """Why pairs went unscored, in one line (for the error when nothing was scored).

        Returns:
            The skipped pairs (their count, the first file and its reason) and the files without a partner (their
            counts and first names), joined by "; "; "no files to pair" when there were none.
        """
        parts = []
        if self.skipped:
            path, reason = self.skipped[0]
            more = f"; {len(self.skipped) - 1} more" if len(self.skipped) > 1 else ""
            parts.append(f"{len(self.skipped)} pair(s) skipped ({Path(path).name}: {reason}{more})")
        for label, files in (("prediction(s) without a target", self.unmatched_predictions),
                             ("target(s) without a prediction", self.unmatched_targets)):
            if files:
                shown = ", ".join(p.name for p in files[:3]) + (" ..." if len(files) > 3 else "")
                parts.append(f"{len(files)} {label} ({shown})")
        return "; ".join(parts) or "no files to pair"

    @property
    def unmatched(self) -> int:
        """Files of either side left without a partner (not scored)."""
        return len(self.unmatched_predictions) + len(self.unmatched_targets)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``OUT/metrics.csv`` (one row per pair) and ``OUT/metrics.json`` (the summary), each atomically
        (`mgid.output_paths.write_atomic`); returns both. Existing files are replaced: check first with
        `check_report_paths`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = out / CSV_NAME, out / JSON_NAME
        columns = ["name", "target", "psnr", "ssim"] + (["psnr_input", "ssim_input"] if self.with_input else [])
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(columns)
        for s in self.scores:
            writer.writerow([_cell(getattr(s, c)) for c in columns])
        write_atomic(csv_path, text.getvalue().encode("utf-8"))
        write_atomic(json_path, (json.dumps(_json_safe(self.summary()), indent=1) + "\n").encode("utf-8"))
        return csv_path, json_path


def check_report_paths(out_dir: str | Path, overwrite: bool, save_dir: str | Path | None = None) -> None:
    """Check, before any scoring, that the report and the de-rained images can be written.

    Args:
        out_dir: where `EvaluationReport.write` puts ``metrics.csv`` and ``metrics.json``: a folder that can be
            written, without those files unless ``overwrite``.
        overwrite: allow replacing existing files.
        save_dir: where de-rained images are saved, or ``None``: a writable folder holding no files yet
            (unless ``overwrite``).

    Raises:
        OutputPathError: a path cannot be written or already holds files.
    """
    out = Path(out_dir)
    for name in (CSV_NAME, JSON_NAME):
        check_output_file(out / name, overwrite=overwrite, what="score file")
    if save_dir is None:
        return
    save = Path(save_dir)
    problem = folder_problem(save)
    if problem is not None:
        raise OutputPathError(f"cannot write the de-rained images to {save}: {problem}")
    if not overwrite and save.is_dir() and any(p.is_file() for p in save.iterdir()):
        raise OutputPathError(f"{save} already holds images; pass --overwrite to replace them, or choose --out")


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


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def _file_pair(image_path: Path, clean_path: Path, max_pixels: int | None = None) -> Pair:
    """A pair read lazily; an image over ``max_pixels`` (from its header, before decoding) is refused."""
    return Pair(image_path.name, clean_path.name,
                lambda: (read_image(image_path, max_pixels), read_image(clean_path, max_pixels)), image_path)


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, channel: Channel = "y",
                     progress: bool = False, max_pixels: int | None = None) -> EvaluationReport:
    """Score the images of a folder against their partners in another (paired by `mgid.data.find_pairs`).

    Args:
        pred_dir: the de-rained images.
        gt_dir: the clean images.
        channel: ``"y"`` or ``"rgb"``.
        progress: show a progress bar.
        max_pixels: a pair with an image over this (read from its header, before decoding) is skipped;
            ``None``: any size.

    Returns:
        The `EvaluationReport`, with the unmatched and skipped files.

    Raises:
        FileNotFoundError: a folder is missing.
        InputError: two files of one side match the same partner (a ``ValueError``).
    """
    pairing = find_pairs(pred_dir, gt_dir)
    report = EvaluationReport(channel, str(pred_dir), str(gt_dir),
                              unmatched_predictions=pairing.unmatched_inputs,
                              unmatched_targets=pairing.unmatched_targets)
    pairs = [_file_pair(p, g, max_pixels) for p, g in pairing.pairs]
    report.scores = score_pairs(_progress(pairs, "scoring", progress), channel=channel, skipped=report.skipped)
    return report


def paired_folders(data_dir: str | Path) -> tuple[Path, Path]:
    """The (rainy, clean) sub-folders of a paired set (`mgid.data.paired.detect_paired_layout`).

    Args:
        data_dir: the set's folder.

    Returns:
        ``(rainy_dir, clean_dir)``.

    Raises:
        FileNotFoundError: ``data_dir`` is not a folder.
        InputError: none of `PAIRED_LAYOUTS` (a ``ValueError`` naming the layouts expected).
    """
    return detect_paired_layout(data_dir)


def evaluate_model(derainer: Any, data_dir: str | Path, channel: Channel = "y", save_dir: str | Path | None = None,
                   progress: bool = False, derain: Callable[[np.ndarray], np.ndarray] | None = None,
                   brightness: bool = False, limit: int | None = None,
                   max_pixels: int | None = None) -> EvaluationReport:
    """De-rain the rainy images of the paired set ``data_dir`` and score them (and the rainy inputs).

    Args:
        derainer: a `mgid.derain.derainer.Derainer` (its default tiling and self-ensemble apply).
        data_dir: the set: ``rain/`` + ``norain/`` or ``input/`` + ``target/`` (`PAIRED_LAYOUTS`).
        channel: ``"y"`` or ``"rgb"``.
        save_dir: also write each de-rained image there under the rainy file's name.
        progress: show a progress bar.
        derain: overrides how an (H, W, 3) uint8 image is de-rained.
        brightness: also measure the brightness shift (in the summary).
        limit: score only the first ``limit`` pairs (in `find_pairs`' order, by name).
        max_pixels: a pair with an image larger than this (from its header, before decoding) is skipped;
            ``None``: any size.

    Returns:
        The `EvaluationReport` (output and rainy-input scores).

    Raises:
        InputError: ``limit`` below 1, an unknown layout, or two files matching the same partner
            (a ``ValueError``).
        FileNotFoundError: ``data_dir`` is not a folder.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit must be at least 1 pair, got {limit}")
    rainy_dir, clean_dir = paired_folders(data_dir)
    run = derain if derain is not None else derainer.derain
    pairing = find_pairs(rainy_dir, clean_dir)
    weights = getattr(derainer, "weights", None)
    report = EvaluationReport(channel, str(rainy_dir), str(clean_dir), weights=str(weights) if weights else None,
                              unmatched_predictions=pairing.unmatched_inputs,
                              unmatched_targets=pairing.unmatched_targets)

    def save(pair: Pair, out: np.ndarray) -> None:
        write_image(Path(save_dir) / pair.name, out)

    pairs = [_file_pair(r, c, max_pixels) for r, c in pairing.pairs][:limit]
    report.scores = score_pairs(_progress(pairs, "de-raining", progress), run, channel=channel, with_input=True,
                                brightness=brightness, skipped=report.skipped,
                                on_output=save if save_dir is not None else None)
    return report


__all__ = ["CSV_NAME", "JSON_NAME", "DerainFn", "EvaluationReport", "ImageScore", "PAIRED_LAYOUTS", "Pair", "Scores",
           "brightness_shift", "check_pair", "check_report_paths", "dataset_pairs", "evaluate_folders", "evaluate_model", "mean_scores",
           "memory_pairs", "net_derain_fn", "paired_folders", "score_pairs", "score_paired_set"]
