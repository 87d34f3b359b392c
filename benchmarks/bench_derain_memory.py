#!/usr/bin/env python
"""Peak memory of de-raining against megapixels, whole images and tiled, and the record `--tile auto` reads.

Every measurement runs in a fresh child process (``python -m benchmarks.bench_derain_memory --child``, from the
repository root), through the path ``mgid derain``
takes (`mgid.load_model(...).derain_with_rain` on an HxWx3 uint8 image, file I/O excluded): the child loads the
weights, warms the network up on a small image (so one-time allocations of the libraries are not counted),
makes the image, resets its peak resident set size (Linux ``/proc/self/clear_refs``), de-rains once and reports
the peak RSS above the RSS it had just before (``VmHWM - VmRSS`` of ``/proc/self/status``). Peak RSS is what runs
a machine out of memory; large tensors are mmap'ed by the allocator and returned when freed, so it follows the
live tensors closely.

Per variant (``--variants``: fp32, fp32+cl = channels_last, bf16+cl = bf16 autocast + channels_last) and per
network width (``--narrow``: the shipped network, and one of ``--narrow`` channels with random weights, since
the activations grow with the width and the image-sized buffers do not; memory does not depend on the weights'
values), two lines:

* whole images at ``--sizes-mp`` megapixels: the least-squares line ``growth = fixed + bytes_per_pixel x pixels``
  (the untiled cost; the tile cost of ``--tile auto`` uses the same bytes per pixel for a tile's pixels);
* tiled (``--tile``) at ``--tiled-sizes-mp``: the line ``growth = tile_fixed + image_bytes_per_pixel x pixels``,
  the buffers of the image's size tiling keeps (since issue 27 only the uint8 results: tiles are converted from
  the uint8 image as needed and the blend streams through a band of one row of tiles); ``tile_fixed`` minus
  ``bytes_per_pixel x tile^2`` is what a tile costs beyond its activations (the band included).

`mgid.derain.memory_budget.load_costs` interpolates the four numbers linearly in the width between the two measured.

Writes ``bench_derain_memory_cpu_<UTC timestamp>.json`` / ``.md`` under ``--out`` and prints the markdown;
``--update-record`` also writes `mgid/derain/inference_memory.json` (`mgid.derain.memory_budget.MEMORY_RECORD`), the numbers
``--tile auto`` sizes its tiles by, naming this report as their source. ``--quick``: a smoke test (seconds).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import log
from mgid.derain.memory_budget import inference_code_sha256

DEFAULT_SIZES_MP = (0.25, 0.5, 1.0)
DEFAULT_TILED_SIZES_MP = (0.5, 1.0, 2.0)
DEFAULT_TILE = 256
#: Variants: (precision, channels_last).
VARIANTS = {"fp32": ("fp32", False), "fp32+cl": ("fp32", True), "bf16+cl": ("bf16", True)}
QUICK = {"sizes_mp": [0.01, 0.02], "tiled_sizes_mp": [0.02, 0.04], "tile": 64, "variants": ["fp32"]}
#: Width of the narrow network measured beside the shipped one.
DEFAULT_NARROW = 8


def _rss(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(field + r":\s+(\d+) kB", text).group(1)) * 1024


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: the peak RSS growth of one ``derain_with_rain``."""
    import numpy as np
    import torch

    from mgid.derain.derainer import Derainer, load_network
    from mgid.models import MGIDNet

    torch.set_num_threads(spec["threads"])
    precision, channels_last = VARIANTS[spec["variant"]]
    net = load_network(spec["weights"])
    if spec["channels"] != net.config.channels:  # the narrow network: random weights, same architecture
        net = MGIDNet(dataclasses.replace(net.config, channels=spec["channels"])).eval()
    derainer = Derainer(net, "cpu", tile=None, precision=precision, channels_last=channels_last)
    warm = np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    derainer.derain_with_rain(warm, tile=None)
    if spec["tile"]:
        derainer.derain_with_rain(warm, tile=64, overlap=16)
    image = np.random.default_rng(0).integers(0, 256, (spec["height"], spec["width"], 3), dtype=np.uint8)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    derainer.derain_with_rain(image, tile=spec["tile"], overlap=spec["overlap"])
    seconds = time.perf_counter() - t0
    return {"growth_bytes": _rss("VmHWM") - before, "rss_before": before, "seconds": round(seconds, 3)}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `child` with ``spec`` in a fresh interpreter; its result."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_derain_memory", "--child", json.dumps(spec)],
                          cwd=harness.REPO, capture_output=True, text=True)
    found = re.search(r"^RESULT (.*)$", proc.stdout, re.M)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"measurement {spec} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(found.group(1))


def size_of(megapixels: float) -> tuple[int, int]:
    """(W, H), 4:3, multiples of 8, of about ``megapixels``."""
    h = max(16, round(math.sqrt(megapixels * 1e6 * 3 / 4) / 8) * 8)
    w = max(16, round(h * 4 / 3 / 8) * 8)
    return w, h


def fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y over x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mgid.derain.derainer import DEFAULT_WEIGHTS, load_network
    from mgid.derain.tiling import DEFAULT_OVERLAP

    weights = str(Path(args.weights) if args.weights else DEFAULT_WEIGHTS)
    channels = load_network(weights).config.channels
    widths = sorted({channels, args.narrow})
    env = harness.environment()
    log(f"bench_derain_memory: {env['cpu']['line']}, variants {args.variants}, widths {widths}, whole "
        f"{args.sizes_mp} MP, tiled {args.tiled_sizes_mp} MP at tile {args.tile}")
    rows = []
    for variant in args.variants:
        for width in widths:
            for kind, sizes, tile in (("whole", args.sizes_mp, None), ("tiled", args.tiled_sizes_mp, args.tile)):
                for mp in sizes:
                    w, h = size_of(mp)
                    spec = {"weights": weights, "channels": width, "variant": variant, "width": w, "height": h,
                            "tile": tile, "overlap": DEFAULT_OVERLAP if not args.quick else 16,
                            "threads": args.threads}
                    result = measure(spec)
                    pixels = w * h
                    rows.append({"variant": variant, "channels": width, "kind": kind, "tile": tile, "size": f"{w}x{h}",
                                 "width": w, "height": h, "megapixels": round(pixels / 1e6, 4), **result,
                                 "bytes_per_pixel": round(result["growth_bytes"] / pixels, 1)})
                    log(f"  {variant:8s} C={width:<3d} {kind:5s} {w}x{h}: +{result['growth_bytes'] / 2**20:.0f} MB "
                        f"({result['growth_bytes'] / pixels:.0f} B/px), {result['seconds']:.1f} s")
    fits, variants = summarise(rows, args.tile)
    return {"command": " ".join(["python -m benchmarks.bench_derain_memory", *args.argv]), "environment": env,
            "settings": {"weights": weights, "channels": channels, "widths": widths, "threads": args.threads,
                         "tile": args.tile, "sizes_mp": args.sizes_mp, "tiled_sizes_mp": args.tiled_sizes_mp,
                         "quick": args.quick},
            "rows": rows, "fits": fits, "variants": variants}


def summarise(rows: list[dict[str, Any]], tile: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the least-squares lines of each variant and width, the numbers ``--tile auto`` plans with).

    The planner's numbers are the worst measured, not the fitted line: the same measurement repeated moved by up
    to a quarter (oneDNN's caches and the allocator's arenas), and a line through noisy points can undershoot a
    size it was fitted on. ``bytes_per_pixel`` is the largest growth per pixel of the whole-image sizes (its
    fixed part folded in, ``fixed_bytes`` 0), ``tiled_image_bytes_per_pixel`` the fitted slope of the narrowest
    network's tiled sizes for every width (the buffers of the image's size do not depend on the width, and the wide
    network's few tiles per second leave its line the noisier: before `mgid.derain.memory_budget.mmap_large_buffers`
    its first-use costs spread by +-50 MB between fresh processes, more than its images' uint8 results), at least `mgid.derain.memory_budget.STREAMED_IMAGE_BYTES_PER_PIXEL` (those
    results), ``tile_extra_bytes`` the largest tiled growth beyond that and the tile's pixels at ``bytes_per_pixel``.
    """
    from mgid.derain.memory_budget import STREAMED_IMAGE_BYTES_PER_PIXEL

    fits: dict[str, Any] = {}
    variants: dict[str, Any] = {}
    for r in rows:
        fits.setdefault(r["variant"], {}).setdefault(str(r["channels"]), {}).setdefault(r["kind"], []).append(
            (r["width"] * r["height"] if "width" in r else round(r["megapixels"] * 1e6), r["growth_bytes"]))
    for variant, by_width in fits.items():
        variants[variant] = {}
        narrowest = min(by_width, key=int)
        image_bpp = max(fit(by_width[narrowest]["tiled"])[1], STREAMED_IMAGE_BYTES_PER_PIXEL)
        for width, kinds in by_width.items():
            whole, tiled = kinds["whole"], kinds["tiled"]
            (fixed, slope), (tile_fixed, image_slope) = fit(whole), fit(tiled)
            bpp = max(g / px for px, g in whole)
            extra = max(max(g - image_bpp * px - bpp * tile ** 2 for px, g in tiled), 0.0)
            variants[variant][width] = {"bytes_per_pixel": round(bpp, 1), "fixed_bytes": 0,
                                        "tiled_image_bytes_per_pixel": round(image_bpp, 1),
                                        "tile_extra_bytes": round(extra)}
            by_width[width] = {"whole_bytes_per_pixel": round(slope, 1), "whole_fixed_bytes": round(fixed),
                               "tiled_image_bytes_per_pixel": round(image_slope, 1),
                               "tiled_fixed_bytes": round(tile_fixed)}
    return fits, variants


def markdown(report: dict[str, Any]) -> str:
    env, cfg = report["environment"], report["settings"]
    lines = ["# Peak memory of de-raining against megapixels", "", f"`{report['command']}`", "",
             f"{harness.provenance(env)}. Weights "
             f"`{Path(cfg['weights']).name}` ({cfg['channels']} channels; C={min(cfg['widths'])}: the same network "
             f"with random weights), {cfg['threads']} thread(s). Peak RSS "
             f"of a fresh process above its RSS just before one `derain_with_rain` of a uint8 image (the `mgid "
             f"derain` path without file I/O), after a warm-up.", "",
             "| variant | C | whole / tiled | size | MP | peak growth | bytes per image pixel | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        kind = "whole" if r["tile"] is None else f"tile {r['tile']}"
        lines.append(f"| {r['variant']} | {r['channels']} | {kind} | {r['size']} | {r['megapixels']:.2f} | "
                     f"{r['growth_bytes'] / 2**20:.0f} MB | {r['bytes_per_pixel']:.0f} | {r['seconds']:.1f} |")
    lines += ["", "Least-squares lines over the sizes above, and the numbers `--tile auto` plans with: the worst "
                  "measured (the largest whole-image growth per pixel; the tiled slope of the narrowest network, "
                  "at least the 6 bytes of the uint8 results; the largest tiled growth beyond them), since a "
                  "repeated measurement moved by up to a quarter (MB = 2^20 bytes):", "",
              "| variant | C | whole: fitted bytes/pixel + fixed | tiled: fitted bytes per image pixel + fixed | "
              "**planned: bytes per pixel** | **planned: tiled bytes per image pixel** | planned: tile extra |",
              "|---|---|---|---|---|---|---|"]
    for name, by_width in report["variants"].items():
        for width, v in by_width.items():
            f = report["fits"][name][width]
            lines.append(f"| {name} | {width} | {f['whole_bytes_per_pixel']:.0f} + {f['whole_fixed_bytes'] / 2**20:.0f} "
                         f"MB | {f['tiled_image_bytes_per_pixel']:.0f} + {f['tiled_fixed_bytes'] / 2**20:.0f} MB | "
                         f"**{v['bytes_per_pixel']:.0f}** | **{v['tiled_image_bytes_per_pixel']:.0f}** | "
                         f"{v['tile_extra_bytes'] / 2**20:.0f} MB |")
    return "\n".join(lines) + "\n"


def compare_markdown(before: dict[str, Any], after: dict[str, Any], names: tuple[str, str]) -> str:
    """A table of the peak growth of the sizes, variants and widths two reports share, before and after."""
    def key(r: dict[str, Any]) -> tuple:
        return r["variant"], r["channels"], r["kind"], r["size"]

    old = {key(r): r for r in before["rows"]}
    lines = ["# Peak memory of de-raining: before and after", "",
             f"Before: `{names[0]}`; after: `{names[1]}`. CPU: {after['environment']['cpu']['line']}. Peak RSS "
             f"growth of one `derain_with_rain` in a fresh process (MB = 2^20 bytes).", "",
             "| variant | C | whole / tiled | size | MP | before | after | change |", "|---|---|---|---|---|---|---|---|"]
    for r in after["rows"]:
        b = old.get(key(r))
        if b is None:
            continue
        kind = "whole" if r["tile"] is None else f"tile {r['tile']}"
        lines.append(f"| {r['variant']} | {r['channels']} | {kind} | {r['size']} | {r['megapixels']:.2f} | "
                     f"{b['growth_bytes'] / 2**20:.0f} MB ({b['bytes_per_pixel']:.0f} B/px) | "
                     f"{r['growth_bytes'] / 2**20:.0f} MB ({r['bytes_per_pixel']:.0f} B/px) | "
                     f"{(r['growth_bytes'] - b['growth_bytes']) / b['growth_bytes']:+.0%} |")
    return "\n".join(lines) + "\n"


def record(report: dict[str, Any], report_json: Path) -> dict[str, Any]:
    """The package record (`mgid.derain.memory_budget.MEMORY_RECORD`) of a report written to ``report_json``."""
    env = report["environment"]
    return {"source": str(report_json.relative_to(harness.REPO)) if report_json.is_relative_to(harness.REPO)
            else str(report_json), "cpu": env["cpu"]["line"], "torch": env["torch"], "commit": env["git"]["commit"],
            "date_utc": env["date_utc"], "inference_code_sha256": inference_code_sha256(),
            "variants": report["variants"]}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_derain_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="variants to measure [default: fp32 fp32+cl bf16+cl; bf16 only on a CPU with native bf16]")
    p.add_argument("--sizes-mp", nargs="+", type=float, default=None, metavar="MP",
                   help=f"whole-image sizes [default: {' '.join(map(str, DEFAULT_SIZES_MP))}]")
    p.add_argument("--tiled-sizes-mp", nargs="+", type=float, default=None, metavar="MP",
                   help=f"tiled sizes [default: {' '.join(map(str, DEFAULT_TILED_SIZES_MP))}]")
    p.add_argument("--tile", type=int, default=argparse.SUPPRESS,
                   help=f"tile of the tiled rows, in pixels [default: {DEFAULT_TILE}; --quick: {QUICK['tile']}]")
    p.add_argument("--narrow", type=int, default=DEFAULT_NARROW, metavar="C",
                   help="width of the narrow network measured beside the shipped one [%(default)s]")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child [1]")
    p.add_argument("--weights", default=None, help="weights [default: the shipped ones]")
    p.add_argument("--out", default=str(harness.RESULTS), help="output folder [benchmarks/results]")
    p.add_argument("--update-record", action="store_true",
                   help="also write mgid/derain/inference_memory.json, the record --tile auto sizes tiles by")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny sizes, fp32 only")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compare", nargs=2, default=None, metavar=("BEFORE.json", "AFTER.json"),
                   help="write the before/after table of two reports (as AFTER's name + _before_after.md), "
                        "measuring nothing")
    p.add_argument("--resummarise", default=None, metavar="REPORT.json",
                   help="recompute the summary (and, with --update-record, the record) of a report from its "
                        "measured rows, measuring nothing")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else {"sizes_mp": list(DEFAULT_SIZES_MP), "tiled_sizes_mp": list(DEFAULT_TILED_SIZES_MP),
                                       "tile": DEFAULT_TILE, "variants": None}
    for key, value in preset.items():
        if getattr(args, key, None) is None:  # not given (--tile is then absent: None is no tile here)
            setattr(args, key, value)
    if args.variants is None:
        from mgid.precision import resolve_precision

        native_bf16 = resolve_precision("auto", "cpu") == "bf16"
        args.variants = [v for v in VARIANTS if native_bf16 or VARIANTS[v][0] != "bf16"]
    if len(args.sizes_mp) < 2 or len(args.tiled_sizes_mp) < 2:
        p.error("give at least two sizes for each line (--sizes-mp, --tiled-sizes-mp)")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.compare is not None:
        before, after = (Path(a).resolve() for a in args.compare)
        text = compare_markdown(json.loads(before.read_text()), json.loads(after.read_text()),
                                (before.name, after.name))
        out = after.with_name(after.stem + "_before_after.md")
        out.write_text(text, encoding="utf-8")
        print(text)
        log(f"wrote {out}")
        return 0
    if args.resummarise is not None:
        json_path = Path(args.resummarise).resolve()
        report = json.loads(json_path.read_text())
        report["fits"], report["variants"] = summarise(report["rows"], report["settings"]["tile"])
        harness.write_report(json_path.with_suffix(""), report, markdown(report))
    else:
        report = run(args)
        json_path, _ = harness.publish(args.out, "bench_derain_memory_cpu", report, markdown(report))
    if args.update_record:
        from mgid.derain.memory_budget import MEMORY_RECORD
        from mgid.output_paths import write_atomic

        write_atomic(MEMORY_RECORD, (json.dumps(record(report, json_path), indent=1) + "\n").encode())
        log(f"wrote {MEMORY_RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
