#!/usr/bin/env python
"""De-raining speed on this CPU, fp32 vs bf16 autocast, contiguous vs channels_last, and what it costs in PSNR.

It de-rains one rainy image per ``--sizes`` entry (WxH; default 1707x1280, a photo of the size the
issue measured, plus 1024x1024 and 512x512) with the shipped weights through the path `mgid derain`
takes (`mgid.load_model(...).derain_with_rain`, uint8 in and out) for each variant:

* ``fp32``: float32, contiguous (the reference);
* ``fp32+cl``: float32, network and input in channels_last memory format;
* ``bf16``: the network under ``torch.autocast(bfloat16)``, contiguous;
* ``bf16+cl``: bf16 autocast + channels_last;

untiled, plus ``--tile`` (default 512) rows for ``--tiled-variants`` on images larger than a tile,
at every ``--threads`` value (``torch.set_num_threads``). Each (size, threads) group warms every
variant up (``--warmup`` runs) and then times ``--repeats`` rounds, one run of every variant per
round (so a burst of load from other processes hits all variants alike); the report gives the best
and the median seconds per image and megapixels per second from the best run.

Accuracy, two ways (Y channel of BT.601, uint8, peak 255: `mgid.eval.metrics`, as the package scores):

* on the timed images: PSNR of each variant's output against the fp32 output (same size and
  threads; ``inf`` = identical) and the largest per-pixel difference in grey levels;
* on the project's held-out sets (`mgid.eval.heldout.evaluate_heldout`, the function behind ``mgid
  heldout``: `mgid.data.heldout_sets.HELDOUT_SETS`, 24 images each): mean PSNR/SSIM against the clean
  images per variant, the change of that PSNR against fp32 and the PSNR of the outputs against
  fp32's. A variant passes when the mean held-out PSNR of every set moves by less than
  ``--criterion-db`` (0.05 dB) from fp32's.

The decision row names the fastest passing variant (geometric mean of its speed-ups over fp32 over
all untiled (size, threads) rows) and what ``precision="auto"`` resolves to on this CPU.

Writes ``bench_derain_cpu_<UTC timestamp>.json`` / ``.md`` under ``--out`` (environment: CPU model
and flags, threads, torch, commit, load) and prints the markdown. Run from the repository root with
the package installed: ``python -m benchmarks.bench_derain`` (about 25 min on 2 cores), or
``--quick`` for a smoke test (seconds).
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import OtherLoad, log
from mgid.data import EmbeddedPairedSet
from mgid.data.heldout_sets import HELDOUT_SETS
from mgid.derain.derainer import DEFAULT_WEIGHTS, Derainer, load_model
from mgid.derain.tiling import DEFAULT_OVERLAP, tile_geometry
from mgid.eval.heldout import evaluate_heldout
from mgid.eval.metrics import psnr
from mgid.precision import resolve_channels_last, resolve_precision

DEFAULT_OUT = harness.RESULTS
DEFAULT_SIZES = ("1707x1280", "1024x1024", "512x512")
#: Settings of --quick (each can still be given explicitly).
QUICK = {"sizes": ["64x48"], "threads": [1], "repeats": 1, "warmup": 1, "heldout_count": 1, "tile": 32,
         "tile_overlap": 16}
FULL = {"sizes": list(DEFAULT_SIZES), "threads": [1, 2], "repeats": 3, "warmup": 1, "heldout_count": None,
        "tile": 512, "tile_overlap": DEFAULT_OVERLAP}
#: Max |held-out PSNR change| (dB) a fast variant may cause.
CRITERION_DB = 0.05


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str
    channels_last: bool


VARIANTS = {v.name: v for v in (Variant("fp32", "fp32", False), Variant("fp32+cl", "fp32", True),
                                Variant("bf16", "bf16", False), Variant("bf16+cl", "bf16", True))}
REFERENCE = "fp32"


# --------------------------------------------------------------------------------------------------
# environment


def environment(weights: Path) -> dict[str, Any]:
    """The harness's record (CPU, flags, torch, git, build_info, load) plus the weights and what
    ``precision=auto`` / ``channels_last=auto`` resolve to here."""
    return {**harness.environment(), "weights": str(weights),
            "auto_precision": resolve_precision("auto", "cpu", "inference"),
            "auto_channels_last": resolve_channels_last(None, "auto", "cpu", "inference")}


# --------------------------------------------------------------------------------------------------
# measuring


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 8 or int(m.group(2)) < 8:
        raise argparse.ArgumentTypeError(f"size must be WxH with W, H >= 8 (e.g. 1707x1280), got {text!r}")
    return int(m.group(1)), int(m.group(2))


def rainy_image(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(rainy, clean) HxWx3 uint8: the first held-out scene (coffee) at max(W, H) px, the held-out
    "streaks" rain, cropped to H x W."""
    rainy, clean = EmbeddedPairedSet(1, size=max(w, h), rain="streaks").images(0)
    return np.ascontiguousarray(rainy[:h, :w]), np.ascontiguousarray(clean[:h, :w])


def _finite(x: float) -> float | None:
    """JSON-safe float: inf (identical images) -> None."""
    return None if math.isinf(x) else round(x, 4)


def time_group(derainers: dict[str, Derainer], runs: list[tuple[str, int | None]], image: np.ndarray,
               warmup: int, repeats: int, overlap: int) -> dict[tuple[str, int | None], dict[str, Any]]:
    """Times every (variant, tile) run on ``image``: warm-ups, then ``repeats`` interleaved rounds."""
    result: dict[tuple[str, int | None], dict[str, Any]] = {}

    def once(name: str, tile: int | None) -> float:
        t0 = time.perf_counter()
        clean, _ = derainers[name].derain_with_rain(image, tile=tile, overlap=overlap)
        dt = time.perf_counter() - t0
        result[(name, tile)]["output"] = clean
        return dt

    load = OtherLoad()
    for key in runs:
        result[key] = {"times": []}
        for _ in range(warmup):
            once(*key)
    for _ in range(repeats):
        for key in runs:
            result[key]["times"].append(once(*key))
    share = load.fraction()
    for key in runs:
        result[key]["other_load"] = share
    return result


def recorder(fn: Callable[[np.ndarray], np.ndarray], store: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def wrapped(rgb: np.ndarray) -> np.ndarray:
        out = fn(rgb)
        store.append(out)
        return out
    return wrapped


def heldout_check(derainers: dict[str, Derainer], count: int | None, sets: Sequence[str],
                  criterion: float) -> dict[str, Any]:
    """Held-out PSNR/SSIM against clean per variant and set, changes against fp32, pass/fail."""
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in derainers}
    models = {name: recorder(d.derain, outputs[name]) for name, d in derainers.items()}
    t0 = time.perf_counter()
    table = evaluate_heldout(models, sets=sets, count=count, baselines=False)
    per_set: dict[str, dict[str, Any]] = {}
    offset = 0
    for kind in sets:
        row = table[kind]
        n = row[REFERENCE].count
        ref_out = outputs[REFERENCE][offset:offset + n]
        per_set[kind] = {}
        for name in derainers:
            r = row[name]
            agreement = [psnr(a, b) for a, b in zip(outputs[name][offset:offset + n], ref_out)]
            finite = [p for p in agreement if not math.isinf(p)]
            per_set[kind][name] = {
                "psnr": round(r.psnr, 4), "ssim": round(r.ssim, 5), "count": r.count,
                "delta_psnr_vs_fp32": round(r.psnr - row[REFERENCE].psnr, 4),
                "delta_ssim_vs_fp32": round(r.ssim - row[REFERENCE].ssim, 5),
                "output_psnr_vs_fp32_min": round(min(finite), 3) if finite else None,
                "identical_to_fp32": sum(math.isinf(p) for p in agreement),
            }
        offset += n
    verdict = {}
    for name in derainers:
        worst = max(abs(per_set[k][name]["delta_psnr_vs_fp32"]) for k in sets)
        verdict[name] = {"max_abs_delta_psnr": round(worst, 4), "passes": worst < criterion}
    return {"sets": per_set, "verdict": verdict, "criterion_db": criterion, "count_per_set": count,
            "seconds": round(time.perf_counter() - t0, 1)}


def decide(rows: list[dict[str, Any]], heldout: dict[str, Any] | None, env: dict[str, Any]) -> dict[str, Any]:
    """The fastest variant that passes the held-out criterion (geometric-mean speed-up, untiled rows)."""
    speedups: dict[str, list[float]] = {}
    for r in rows:
        if r["tile"] is None and r["status"] == "ok" and r["speedup_vs_fp32"]:
            speedups.setdefault(r["variant"], []).append(r["speedup_vs_fp32"])
    geo = {v: round(math.exp(statistics.fmean(math.log(s) for s in xs)), 3) for v, xs in speedups.items()}
    passing = {v: g for v, g in geo.items()
               if heldout is not None and heldout["verdict"].get(v, {}).get("passes")}
    best = max(passing, key=passing.get) if passing else REFERENCE
    auto = VARIANTS[best].precision == env["auto_precision"] and VARIANTS[best].channels_last == env["auto_channels_last"]
    auto_name = next((v.name for v in VARIANTS.values() if v.precision == env["auto_precision"]
                      and v.channels_last == env["auto_channels_last"]), "?")
    return {"geomean_speedup_vs_fp32": geo, "fastest_passing": best, "auto_resolves_to": auto_name,
            "auto_is_fastest_passing": auto, "heldout_checked": heldout is not None}


# --------------------------------------------------------------------------------------------------
# report


def _fmt_psnr(x: float | None, identical: bool = False) -> str:
    if identical:
        return "identical"
    return "—" if x is None else f"{x:.2f} dB"


def markdown(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    lines = ["# De-raining speed on the CPU: fp32 vs bf16 autocast, contiguous vs channels_last",
             "",
             f"`{report['command']}`",
             "",
             f"CPU: {env['cpu']['line']}; torch {env['torch']}, commit {env['git']['commit']}"
             f"{' (dirty tree)' if env['git']['dirty'] else ''}, {env['date_utc']}; load average at start "
             f"{env['loadavg_start']}, at end {report['loadavg_end']}. Weights: `{Path(env['weights']).name}`. "
             f"Best of {cfg['repeats']} runs after {cfg['warmup']} warm-up(s); `mgid.load_model(...)."
             f"derain_with_rain` on uint8 images (the `mgid derain` path, file I/O excluded). "
             f"'other load' = share of the machine's CPU time other processes used during the group.",
             "",
             "| size | threads | variant | tile | s/image (best) | median | MP/s | × fp32 (untiled) | output PSNR vs fp32 "
             "| max Δ (grey) | PSNR vs clean | other load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['size']} | {r['threads'] or '—'} | {r['variant']} | {r['tile'] or '—'} | {r['status']} "
                         f"| | | | | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['threads']} | {r['variant']} | {r['tile'] or '—'} | {r['best_s']:.3f} | "
            f"{r['median_s']:.3f} | {r['mp_per_s']:.3f} | {r['speedup_vs_fp32']:.2f} | "
            f"{_fmt_psnr(r['psnr_vs_fp32'], r['identical_to_fp32'])} | {r['max_abs_diff_vs_fp32']} | "
            f"{r['psnr_vs_clean']:.2f} | {r['other_load'] if r['other_load'] is not None else '?'} |")
    held = report["heldout"]
    if held is not None:
        sets = list(held["sets"])
        lines += ["", f"Held-out sets ({held['count_per_set'] or 'all'} images each; mean Y PSNR / SSIM against "
                      f"clean, change against fp32; criterion |Δ PSNR| < {held['criterion_db']} dB in every set):",
                  "",
                  "| variant | " + " | ".join(f"{s}: PSNR (Δ) / SSIM" for s in sets)
                  + " | worst output PSNR vs fp32 | max abs Δ PSNR | passes |",
                  "|---" * (len(sets) + 4) + "|"]
        for name, v in held["verdict"].items():
            cells = [f"{held['sets'][s][name]['psnr']:.3f} ({held['sets'][s][name]['delta_psnr_vs_fp32']:+.4f}) / "
                     f"{held['sets'][s][name]['ssim']:.4f}" for s in sets]
            mins = [held["sets"][s][name]["output_psnr_vs_fp32_min"] for s in sets]
            worst = min((m for m in mins if m is not None), default=None)
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_fmt_psnr(worst, worst is None)} | "
                         f"{v['max_abs_delta_psnr']:.4f} | {'yes' if v['passes'] else 'no'} |")
    d = report["decision"]
    geo = ", ".join(f"{k} {v:.2f}×" for k, v in d["geomean_speedup_vs_fp32"].items())
    lines += ["", f"Geometric-mean speed-up over fp32 (untiled rows): {geo}. Fastest variant passing the "
                  f"held-out criterion: **{d['fastest_passing']}**"
              + ("" if d["heldout_checked"] else " (held-out check not run: fp32 kept)")
              + f"; `precision=auto` resolves to {d['auto_resolves_to']} on this CPU"
              + (" (the same)." if d["auto_is_fastest_passing"] else " (NOT the fastest passing variant).")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_derain",
        description="Time mgid de-raining on the CPU (fp32 / bf16 autocast x contiguous / channels_last, untiled "
                    "and tiled, per thread count) and check the held-out PSNR change of each fast variant "
                    "against fp32. Writes bench_derain_cpu_<timestamp>.json/.md under --out.")
    p.add_argument("--sizes", nargs="+", type=parse_size, default=None, metavar="WxH",
                   help=f"image sizes [default: {' '.join(DEFAULT_SIZES)}; --quick: 64x48]")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="variants to time (fp32 always runs: it is the reference) [default: all]")
    p.add_argument("--threads", nargs="+", type=int, default=None, metavar="N",
                   help="torch intra-op thread counts [default: 1 2; --quick: 1]")
    p.add_argument("--repeats", type=int, default=None, metavar="N", help="timed runs per row [3; --quick: 1]")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed runs first [1]")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="also time tiled inference with this tile on images larger than one tile; 0 = no tiled "
                        "rows [512; --quick: 32]")
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX",
                   help=f"overlap of the tiled rows [{DEFAULT_OVERLAP}; --quick: 16]")
    p.add_argument("--tiled-variants", nargs="+", choices=list(VARIANTS), default=["fp32", "bf16+cl"],
                   help="variants of the tiled rows [default: fp32 bf16+cl]")
    p.add_argument("--heldout-count", type=int, default=None, metavar="N",
                   help="held-out images per set [default: all (24); --quick: 1]")
    p.add_argument("--heldout-sets", nargs="+", choices=list(HELDOUT_SETS), default=list(HELDOUT_SETS),
                   help="held-out sets [default: all]")
    p.add_argument("--no-heldout", action="store_true", help="skip the held-out PSNR check")
    p.add_argument("--criterion-db", type=float, default=CRITERION_DB, metavar="DB",
                   help="largest allowed |held-out PSNR change| against fp32 [%(default)s]")
    p.add_argument("--weights", default=None, metavar="FILE.safetensors", help="weights [default: the shipped ones]")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help="output folder [benchmarks/results]")
    p.add_argument("--quick", action="store_true", help="smoke test: one tiny image, one run, one held-out image per set")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value if key != "sizes" else [parse_size(s) for s in value])
    if min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    if args.tile:
        try:
            tile_geometry(args.tile, args.tile_overlap)
        except ValueError as exc:
            p.error(str(exc))
    if REFERENCE not in args.variants:
        args.variants = [REFERENCE, *args.variants]
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything; the report as a dict (also what the JSON holds)."""
    weights = Path(args.weights) if args.weights else DEFAULT_WEIGHTS
    env = environment(weights)
    threads_at_start = torch.get_num_threads()
    derainers = {name: load_model(weights, "cpu", precision=VARIANTS[name].precision,
                                  channels_last=VARIANTS[name].channels_last) for name in args.variants}
    tiled = [v for v in args.tiled_variants if v in derainers] if args.tile else []
    log(f"bench_derain: {env['cpu']['line']}, torch {env['torch']}, variants {args.variants}, tiled "
        f"{tiled or 'none'}, sizes {args.sizes}, threads {args.threads}, load {env['loadavg_start']}")
    rows: list[dict[str, Any]] = []
    try:
        for w, h in args.sizes:
            rainy, clean = rainy_image(w, h)
            mp = w * h / 1e6
            fits = args.tile and max(-(-h // 8) * 8, -(-w // 8) * 8) <= tile_geometry(args.tile, args.tile_overlap)[0]
            runs = [(v, None) for v in args.variants] + [(v, args.tile) for v in tiled if not fits]
            for t in args.threads:
                torch.set_num_threads(t)
                log(f"  {w}x{h}, {t} thread(s): {len(runs)} runs x ({args.warmup} + {args.repeats}) ...")
                group = time_group(derainers, runs, rainy, args.warmup, args.repeats, args.tile_overlap)
                ref = group[(REFERENCE, None)]
                for (name, tile), g in group.items():
                    best, out = min(g["times"]), g["output"]
                    agreement = psnr(out, ref["output"])
                    row = {"size": f"{w}x{h}", "megapixels": round(mp, 4), "threads": t, "variant": name,
                           "precision": VARIANTS[name].precision, "channels_last": VARIANTS[name].channels_last,
                           "tile": tile, "status": "ok", "times_s": [round(x, 4) for x in g["times"]],
                           "best_s": round(best, 4), "median_s": round(statistics.median(g["times"]), 4),
                           "mp_per_s": round(mp / best, 4),
                           "speedup_vs_fp32": round(min(ref["times"]) / best, 3),
                           "psnr_vs_fp32": _finite(agreement), "identical_to_fp32": math.isinf(agreement),
                           "max_abs_diff_vs_fp32": int(np.abs(out.astype(np.int16) - ref["output"]).max()),
                           "psnr_vs_clean": round(psnr(out, clean), 4), "other_load": g["other_load"]}
                    rows.append(row)
                    log(f"    {name:8s} tile {tile or '-':>4}: {row['best_s']:.3f} s, {row['mp_per_s']:.3f} MP/s, "
                        f"{row['speedup_vs_fp32']:.2f}x, vs fp32 {_fmt_psnr(row['psnr_vs_fp32'], row['identical_to_fp32'])}")
            if fits:
                for v in tiled:
                    rows.append({"size": f"{w}x{h}", "megapixels": round(mp, 4), "threads": None, "variant": v,
                                 "precision": VARIANTS[v].precision, "channels_last": VARIANTS[v].channels_last,
                                 "tile": args.tile, "status": "skipped: fits in one tile"})
        heldout = None
        if not args.no_heldout:
            torch.set_num_threads(max(args.threads))
            log(f"  held-out check ({', '.join(args.heldout_sets)}, {args.heldout_count or 'all'} per set) ...")
            heldout = heldout_check(derainers, args.heldout_count, args.heldout_sets, args.criterion_db)
            for name, v in heldout["verdict"].items():
                log(f"    {name:8s} max |delta PSNR| {v['max_abs_delta_psnr']:.4f} dB: "
                    f"{'passes' if v['passes'] else 'fails'}")
    finally:
        torch.set_num_threads(threads_at_start)
    return {"command": " ".join(["python -m benchmarks.bench_derain", *args.argv]),
            "settings": {"sizes": [f"{w}x{h}" for w, h in args.sizes], "variants": args.variants,
                         "tiled_variants": tiled, "tile": args.tile or None, "tile_overlap": args.tile_overlap,
                         "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                         "quick": args.quick},
            "environment": env, "rows": rows, "heldout": heldout, "decision": decide(rows, heldout, env),
            "loadavg_end": harness.loadavg()}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    text = markdown(report)
    harness.publish(args.out, "bench_derain_cpu", report, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
