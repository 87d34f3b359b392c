#!/usr/bin/env python
"""Scores of mgid weights on public paired de-raining test sets, beside the published results of other methods.

Each ``--sets`` folder is a paired set in a layout `mgid evaluate --data` reads (``rain/`` + ``norain/`` as
Rain100L/H, or ``input/`` + ``target/``; files paired by name). Default: the folders of
``../shared/benchmarks/`` that exist (``rain100h``, ``rain12``, ``rain100l-10``; evaluation only, never
trained or tuned on: see that folder's README). Every ``--weights`` file (default the shipped weights;
several allowed, named by ``--names``) de-rains every set through `mgid.eval.scoring.evaluate_model`, the
function behind ``mgid evaluate --data``, and is scored as it scores: PSNR and SSIM on the Y channel of
BT.601 (uint8, peak 255, Gaussian SSIM 11x11, sigma 1.5; the papers' convention, `mgid.eval.metrics`).

Per set, the report has a row for the rainy input (the same function with the identity as de-rainer),
one per weights file (PSNR / SSIM, gain over the input in dB, mean brightness shift of the output against
the clean image in Y grey levels, seconds per image) and, for Rain100H and Rain12, the published results of
other methods (`PUBLISHED`, citations with their sources). ``rain100l-10`` holds ten of Rain100L's 100
pairs: not comparable with published Rain100L means, and said so.

Writes ``bench_public_<UTC timestamp>.json`` / ``.md`` under ``--out`` (default benchmarks/results/) with the
CPU line (`harness.cpu_info`), the command, the arithmetic (``--precision``, default fp32 so the scores
are reproducible; ``--self-ensemble``), the threads and the wall time, and prints the markdown.
``--picture DIR`` also writes one comparison picture per set (rainy | each weights | clean) of its
representative image (the pair whose PSNR gain with the first weights is nearest the set's median gain),
downscaled until the file is under `PICTURE_MAX_BYTES`.

Run from the repository root with the package installed: ``python -m benchmarks.bench_public``
(the three shared sets, 122 pairs of about 480x320: about 2 min with the shipped weights in fp32 on one
thread of the Xeon of the committed reports, 0.75 s an image; 8x that with ``--self-ensemble``).
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import log
from mgid.checkpoint import CheckpointError
from mgid.data import read_image, write_image
from mgid.derain.derainer import load_model, name_weights
from mgid.eval.scoring import EvaluationReport, evaluate_model, paired_folders
from mgid.precision import CHANNELS_LAST_SETTINGS, PRECISIONS
from mgid.visualize import image_grid

#: The shared public test sets, beside the repository (absent in a user's clone).
SHARED = harness.REPO.parent / "shared" / "benchmarks"
DEFAULT_SET_NAMES = ("rain100h", "rain12", "rain100l-10")
RAINY = "rainy input"
#: A comparison picture is downscaled until its file is smaller than this.
PICTURE_MAX_BYTES = 300 * 1024
#: Longest side of one panel of a comparison picture before any further downscaling.
PICTURE_PANEL_SIDE = 320

AIDNET, PRENET = "AIDNet README (cuiyixin555/AIDNet)", "PReNet README (csdwren/PReNet)"
#: Published Y-channel PSNR / SSIM of other methods per set (keyed by the set folder's name), copied with their
#: sources from ../shared/benchmarks/README.md: (method, kind, source, {set: (PSNR, SSIM)}, note). The supervised
#: methods were trained on each set's own paired training data, which mgid never sees.
PUBLISHED: list[tuple[str, str, str, dict[str, tuple[float, float]], str | None]] = [
    ("GMM (Li et al. 2016)", "prior, no learning", AIDNET, {"rain100h": (15.05, 0.425), "rain12": (32.02, 0.855)}, None),
    ("DDN (Fu et al. 2017)", "supervised", AIDNET, {"rain100h": (21.92, 0.764), "rain12": (31.78, 0.900)}, None),
    ("SIRR (Wei et al. 2019)", "semi-supervised", AIDNET, {"rain100h": (22.47, 0.716), "rain12": (34.02, 0.935)},
     None),
    ("JORDER (Yang et al. 2017)", "supervised", PRENET, {"rain100h": (26.54, 0.835), "rain12": (33.92, 0.953)}, None),
    ("PReNet (Ren et al. 2019)", "supervised", PRENET, {"rain100h": (29.46, 0.899), "rain12": (36.66, 0.961)}, None),
    ("RCDNet (Wang et al. 2020)", "supervised", "RCDNet README", {"rain100h": (31.28, 0.909)}, None),
    ("Restormer (Zamir et al. 2022)", "supervised", "mmagic Restormer README", {"rain100h": (31.48, 0.906)},
     "scored on 480x320 crops"),
]
#: Sets whose folder name looks like a published benchmark but whose means are not comparable with it.
NOT_COMPARABLE = {"rain100l-10": "ten of Rain100L's 100 test pairs (the full set was not available): not comparable "
                                 "with published Rain100L means, so none are listed"}


# --------------------------------------------------------------------------------------------------
# arguments


def default_sets() -> list[Path]:
    """The folders of `DEFAULT_SET_NAMES` under ../shared/benchmarks that exist (none in a user's clone)."""
    return [SHARED / name for name in DEFAULT_SET_NAMES if (SHARED / name).is_dir()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_public", description=__doc__.split("\n\n")[0],
                                epilog="example: python -m benchmarks.bench_public --weights runs/a/checkpoints/"
                                       "last.safetensors --names mine --sets ~/data/Rain100L")
    p.add_argument("--weights", nargs="+", metavar="FILE.safetensors",
                   help="weights to score (several allowed) [default: the shipped weights]")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a name per --weights file [default: file stems]")
    p.add_argument("--sets", nargs="+", metavar="DIR", type=Path,
                   help="paired sets (rain/+norain/ or input/+target/) [default: the folders of "
                        f"{SHARED} that exist: {', '.join(DEFAULT_SET_NAMES)}]")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS["inference"]),
                   help="arithmetic of the network [default: fp32, reproducible scores]")
    p.add_argument("--channels-last", default="auto", choices=list(CHANNELS_LAST_SETTINGS),
                   help="channels_last memory format (auto: on on a CPU) [default: auto]")
    p.add_argument("--self-ensemble", action="store_true",
                   help="mean rain layer over the 8 flips and quarter turns of each image (8x the time)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="[default: auto]")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads [default: torch's default]")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N pairs of each set (a quick check; the means are then not the "
                        "set's) [default: all]")
    p.add_argument("--picture", type=Path, default=None, metavar="DIR",
                   help="also write DIR/bench_public_<set>.png (or .jpg): rainy | each weights | clean")
    p.add_argument("--out", type=Path, default=harness.RESULTS, metavar="DIR",
                   help="where the report goes [default: benchmarks/results]")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for option, value in (("--threads", args.threads), ("--limit", args.limit)):
        if value is not None and value < 1:
            p.error(f"{option} must be at least 1, got {value}")
    return args


# --------------------------------------------------------------------------------------------------
# scoring


class Stopwatch:
    """Wraps a de-raining function and adds up the seconds spent in it (reading and scoring not counted)."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        self.fn, self.seconds, self.calls = fn, 0.0, 0

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.fn(rgb)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def _num(x: float | None, digits: int) -> float | None:
    """Rounded for the JSON; None for a missing or non-finite value (strict JSON has no NaN)."""
    return None if x is None or not math.isfinite(x) else round(x, digits)


def _row(method: str, report: EvaluationReport, watch: Stopwatch | None, source: str) -> dict[str, Any]:
    means = report.means()
    return {"method": method, "kind": "input" if watch is None else "mgid", "psnr": _num(means.psnr, 4),
            "ssim": _num(means.ssim, 5), "gain_db": None if watch is None else _num(means.psnr - means.psnr_input, 4),
            "brightness_shift": _num(means.brightness_shift, 3), "count": means.count,
            "seconds": None if watch is None else _num(watch.seconds, 3),
            "seconds_per_image": None if watch is None else _num(watch.seconds / max(watch.calls, 1), 4),
            "source": source}


def representative(report: EvaluationReport) -> dict[str, str]:
    """``{"rainy", "clean"}`` file names of the pair whose PSNR gain is nearest the set's median gain (first of ties)."""
    gains = [s.psnr - s.psnr_input for s in report.scores]
    median = statistics.median(gains)
    best = report.scores[min(range(len(gains)), key=lambda i: abs(gains[i] - median))]
    return {"rainy": best.name, "clean": best.target}


def score_set(folder: Path, derainers: dict[str, Any], limit: int | None, progress: bool) -> dict[str, Any]:
    """The rows of one set (rainy input, each weights, published results) and what was skipped."""
    rainy_dir, clean_dir = paired_folders(folder)
    name = folder.resolve().name
    # the rainy input through the same loop, de-rained by the identity: its PSNR is the input's
    identity = evaluate_model(None, folder, derain=lambda rgb: rgb, brightness=True, limit=limit)
    rows = [_row(RAINY, identity, None, "measured here")]
    reports = {}
    for label, derainer in derainers.items():
        log(f"{name}: {label}")
        watch = Stopwatch(derainer.derain)
        reports[label] = evaluate_model(derainer, folder, derain=watch, brightness=True, limit=limit,
                                        progress=progress)
        rows.append(_row(label, reports[label], watch, f"measured here ({derainer.weights})"))
    input_psnr = rows[0]["psnr"]
    for method, kind, source, results, note in ([] if limit is not None else PUBLISHED):
        if name.lower() in results:
            psnr, ssim = results[name.lower()]
            gain = None if input_psnr is None else round(psnr - input_psnr, 2)
            rows.append({"method": method, "kind": kind, "psnr": psnr, "ssim": ssim, "gain_db": gain,
                         "brightness_shift": None, "count": None, "seconds": None, "seconds_per_image": None,
                         "source": source, "note": note})
    first = next(iter(reports.values()))
    note = NOT_COMPARABLE.get(name.lower())
    if limit is not None:
        note = f"first {limit} pairs only (--limit): not the set's means; published results left out"
    return {"name": name, "path": str(folder), "rainy": str(rainy_dir), "clean": str(clean_dir),
            "pairs": first.means().count, "rows": rows, "note": note,
            "representative": representative(first) if first.scores else None,
            "skipped": [{"file": str(p), "reason": r} for p, r in first.skipped],
            "unmatched": [str(p) for p in first.unmatched_predictions + first.unmatched_targets]}


# --------------------------------------------------------------------------------------------------
# picture


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _encoded_size(image: np.ndarray, suffix: str) -> int:
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {suffix} picture")
    return buf.size


def write_picture(result: dict[str, Any], derainers: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``folder/bench_public_<set>.png`` (or ``.jpg`` when a PNG would exceed `PICTURE_MAX_BYTES`):
    rainy | each weights | clean of the set's representative pair, panels downscaled until it fits."""
    pair = result["representative"]
    rainy, clean = read_image(Path(result["rainy"]) / pair["rainy"]), read_image(Path(result["clean"]) / pair["clean"])
    panels = [rainy, *(d.derain(rainy) for d in derainers.values()), clean]
    headers = ["rainy", *derainers, "clean"]
    side = PICTURE_PANEL_SIDE
    while True:
        grid = image_grid([[_fit(p, side) for p in panels]], headers=headers)
        for suffix in (".png", ".jpg"):  # lossless when it fits, else JPEG
            size = _encoded_size(grid, suffix)
            if size < PICTURE_MAX_BYTES:
                path = write_image(folder / f"bench_public_{result['name']}{suffix}", grid)
                return {"file": str(path), "bytes": size, "image": pair["rainy"], "panel_side": side,
                        "columns": headers}
        side = int(side * 0.8)
        if side < 32:
            raise ValueError(f"cannot fit the picture of {result['name']} in {PICTURE_MAX_BYTES} bytes")


# --------------------------------------------------------------------------------------------------
# report


def _cell(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    names = ", ".join(report["weights"])
    lines = [f"# Public de-raining test sets: {names}", "",
             f"`{report['command']}`", "",
             f"- CPU: {env['cpu']['line']}",
             f"- arithmetic: {report['arithmetic']}" + ("; self-ensemble of the 8 flips/quarter turns"
                                                        if cfg["self_ensemble"] else "; no self-ensemble"),
             f"- torch threads: {cfg['threads']}; device: {report['device']}; wall time {report['wall_s']:.1f} s "
             f"(de-raining {report['derain_s']:.1f} s); other load on the machine: {report['other_load']}",
             f"- commit {env['git']['commit']}" + (" (dirty tree)" if env["git"]["dirty"] else "")
             + f", torch {env['torch']}, {env['date_utc']}",
             "- weights: " + "; ".join(f"{k}: `{v}`" for k, v in report["weights"].items()),
             "- scores: mean PSNR (dB) / SSIM on the Y channel of BT.601 (uint8, peak 255, Gaussian SSIM 11x11, "
             "sigma 1.5), as `mgid evaluate --data`; gain: PSNR minus the rainy input's (published rows: against "
             "the input measured here); shift: mean Y of the output minus mean Y of the clean image (grey levels)",
             "- published rows are citations (sources in the table, as copied in ../shared/benchmarks/README.md); "
             "the supervised methods were trained on each set's own paired training data, which mgid never sees", ""]
    for s in report["sets"]:
        lines += [f"## {s['name']} ({s['pairs']} pairs)", ""]
        if s["note"]:
            lines += [f"Note: {s['note']}.", ""]
        lines += ["| method | PSNR | SSIM | gain (dB) | shift | s / image | source |", "|---|---|---|---|---|---|---|"]
        for r in s["rows"]:
            method = r["method"] + (f" ({r['note']})" if r.get("note") else "")
            gain = "—" if r["gain_db"] is None else f"{r['gain_db']:+.2f}"
            shift = "—" if r["brightness_shift"] is None else f"{r['brightness_shift']:+.1f}"
            lines.append(f"| {method} | {_cell(r['psnr'], '.2f')} | {_cell(r['ssim'], '.4f')} | {gain} | {shift} | "
                         f"{_cell(r['seconds_per_image'], '.3f')} | {r['source']} |")
        for item in s["skipped"]:
            lines.append(f"\nskipped {item['file']}: {item['reason']}")
        if s["unmatched"]:
            lines.append(f"\n{len(s['unmatched'])} file(s) without a partner, not scored")
        if s.get("picture"):
            p = s["picture"]
            lines.append(f"\npicture: `{Path(p['file']).name}` ({p['bytes'] // 1024} KB; {p['image']}, the pair "
                         f"nearest the median gain; {' | '.join(p['columns'])})")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Score every set with every weights file; the report's dict (see the module doc)."""
    sets = args.sets or default_sets()
    if not sets:
        raise ValueError(f"no --sets given and none of {', '.join(DEFAULT_SET_NAMES)} is under {SHARED}; pass "
                         f"--sets DIR (a paired set with rain/+norain/ or input/+target/)")
    for folder in sets:
        paired_folders(folder)  # a wrong folder fails before any weights are loaded
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = harness.environment()
    load = harness.OtherLoad()
    t0 = time.perf_counter()
    named = name_weights(args.weights, args.names)
    derainers = {n: load_model(w, args.device, precision=args.precision, self_ensemble=args.self_ensemble,
                               channels_last=CHANNELS_LAST_SETTINGS[args.channels_last]) for n, w in named.items()}
    first = next(iter(derainers.values()))
    log(f"on {first.device}, {first.arithmetic.describe()}; CPU {env['cpu']['line']}")
    results = []
    derain_s = 0.0
    for folder in sets:
        t_set = time.perf_counter()
        result = score_set(Path(folder), derainers, args.limit, not args.quiet)
        derain_s += sum(r["seconds"] for r in result["rows"] if r["kind"] == "mgid")
        if args.picture is not None and result["representative"]:
            result["picture"] = write_picture(result, derainers, args.picture)
        log(f"{result['name']}: {time.perf_counter() - t_set:.1f} s")
        results.append(result)
    return {"command": "python -m benchmarks.bench_public" + ("" if not argv else " " + shlex.join(argv)),
            "environment": env, "weights": {n: str(d.weights) for n, d in derainers.items()},
            "arithmetic": first.arithmetic.describe(), "device": str(first.device),
            "settings": {"precision": first.precision, "channels_last": first.channels_last,
                         "self_ensemble": args.self_ensemble, "threads": torch.get_num_threads(),
                         "limit": args.limit},
            "sets": results, "wall_s": round(time.perf_counter() - t0, 2), "derain_s": round(derain_s, 2),
            "other_load": load.fraction()}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        report = run(args, argv)
    except (FileNotFoundError, CheckpointError, RuntimeError, TypeError, ValueError) as exc:
        print(f"bench_public: error: {exc}", file=sys.stderr)
        return 2
    text = markdown(report)
    harness.publish(args.out, "bench_public", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
