#!/usr/bin/env python
"""Training throughput of the MGID step on this CPU (or one CUDA GPU), per setting, in one run.

It times one training step as ``mgid train`` runs it (`mgid.train.objective.MGIDObjective`: both frames forward
and the loss; the finiteness check; then `mgid.train.objective.optimizer_step`: backward, Adam) with the model
and loss of a named config (default ``cpu``, the recipe of the shipped weights) and reports the
median seconds per step and training images per second (two frames per pair: ``2 * batch / s``)
for these settings, one factor at a time from a baseline (fp32, contiguous, eager, fused ops,
the first ``--threads`` value):

* precision: fp32 vs bf16 autocast (``MGIDObjective(..., precision="bf16")``);
* memory format: contiguous vs channels_last (network and inputs);
* eager vs ``torch.compile(net)`` (compile time reported apart: it is in the first warm-up step);
* mgid ops: fused kernels vs the PyTorch reference (``mgid.ops.set_ops_mode``);
* intra-op threads (``torch.set_num_threads``): the other ``--threads`` values;

plus bf16 + channels_last together, and ``auto`` (what training resolves on this CPU,
`mgid.precision.resolve_arithmetic`: bf16 + channels_last with native bf16, fp32 elsewhere) eager and
compiled at every ``--threads`` value; the report says whether ``auto`` is the fastest eager
combination measured (section "Is auto the fastest?"). The full cross product is left out: it would take
hours on a small CPU and one-factor rows already say what each setting buys.

Data loading is timed apart: pairs per second that the training set (`mgid.data.make_dataset`,
the streamed `StreamingTimeLapse` for the embedded data) delivers through a
``DataLoader(batch_size=B, num_workers=k)`` for each ``--workers`` k, compared with the pairs per
second each case consumes, so the table says whether data is ever the bottleneck. Every step
case trains on batches rendered once before timing (so the step times hold no data loading).

A loss-curve check (``--curve-steps``) trains fp32 eager and the fast path (bf16 +
channels_last + fused ops) from the same seed on the same batches and compares the curves.

``--device cuda`` times the same step on the GPU (batches moved there before timing, the timed region between
``torch.cuda.synchronize()`` calls) for baseline, bf16, channels_last, both, the reference ops in fp32 and bf16,
and compiled (threads and ``auto`` are CPU settings); the loader and the curve run as on the CPU. It exits with
a one-line error (code 2) where torch sees no GPU. ``tools/gpu_check.sh`` runs it on the lent GPU machine.

Writes ``bench_train_<cpu|cuda>_<UTC timestamp>.json`` / ``.md`` (and ``_curve.png``) under ``--out``
and prints the report. A case that fails (e.g. torch.compile without a working C++ compiler)
is reported as failed with its error; the run goes on.

Run from the repository root: ``python -m benchmarks.bench_train --quick``.

This module is the entry (command line, `main`); the parts live in siblings named after them:
`benchmarks.train_cases` (the cases and how one is timed), `benchmarks.train_data` (batch rendering, the loader
measurement, data verdicts), `benchmarks.train_curve` (the loss-curve check and its plot) and
`benchmarks.train_report` (the markdown report).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

import mgid.ops as ops
from benchmarks import harness
from benchmarks.harness import BUSY_SHARE, OtherLoad, log
from benchmarks.train_cases import auto_verdict, build_cases, run_case, short_error
from benchmarks.train_curve import curve_stats, plot_curves, train_curve
from benchmarks.train_data import add_data_verdicts, measure_loader, render_batches, to_float_batch
from benchmarks.train_report import markdown_report
from mgid.config.train_config import NAMED_CONFIGS, resolve_config
from mgid.data import make_dataset

DEFAULT_OUT = harness.RESULTS
#: Settings of --quick (each can still be overridden by its own option).
QUICK = {"batch": 2, "crop": 32, "warmup": 1, "steps": 2, "curve_steps": 4, "data_batches": 2}


# --------------------------------------------------------------------------------------------------
# environment


def environment(device: torch.device) -> dict[str, Any]:
    """The harness's record (CPU, flags, torch, git, build_info, load) plus OpenCV's thread count and, on
    CUDA, the GPU (name, capability, memory) and torch's CUDA version."""
    env = harness.environment()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"sm_{props.major}{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "torch_cuda": torch.version.cuda}
    try:
        import cv2

        env["cv2_threads"] = cv2.getNumThreads()
    except Exception:  # noqa: BLE001
        env["cv2_threads"] = None
    return env



# --------------------------------------------------------------------------------------------------
# command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_train",
        description=__doc__.split("\n\n")[0] + " Times the MGID training step per setting (precision, memory "
                    "format, eager/compiled, fused/reference ops, threads), the data loader per worker count, and "
                    "compares the fp32 and fast-path loss curves.",
        epilog="Exit code: 0 when the report was written and the baseline case ran; 1 when the baseline failed "
               "(the report is still written); 2 on bad options.\nexample: python -m benchmarks.bench_train --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the step cases and the curve run: cpu, or cuda (fails with a message where torch "
                        "sees no GPU) (default: %(default)s)")
    p.add_argument("--config", default="cpu", choices=sorted(NAMED_CONFIGS),
                   help="named config whose model, loss, optimiser, data settings, batch and crop are used "
                        "(default: %(default)s, the CPU recipe)")
    p.add_argument("--batch", type=int, help="pairs per step (default: the config's batch_size; --quick: 2)")
    p.add_argument("--crop", type=int, help="side of the square crops (default: the config's crop_size; --quick: 32)")
    p.add_argument("--warmup", type=int, help="untimed warm-up steps per case (default: 2; --quick: 1); a compiled "
                                              "case takes at least 1 (it compiles there)")
    p.add_argument("--steps", type=int, help="timed steps per case; the median is reported (default: 5; --quick: 2)")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="torch intra-op thread counts, comma-separated: the first is the baseline's, the others are "
                        "one-factor cases, and the auto cases run at each (default: 1,2, capped to the usable CPUs)")
    p.add_argument("--workers", type=_int_list, default=[0, 1, 2],
                   help="DataLoader worker counts for the data-loading measurement (default: 0,1,2)")
    p.add_argument("--data-batches", type=int,
                   help="batches timed per worker count, after the first (default: 20; --quick: 2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the torch.compile cases (default: yes, except with --quick); --no-compile skips them")
    p.add_argument("--cases", default=None,
                   help="comma-separated case ids to run (baseline, bf16, channels_last, reference_ops, threads_T, "
                        "bf16_channels_last, auto_Tt, compiled, auto_compiled_Tt); the others are listed as not run "
                        "(default: all). Speed-ups need the baseline.")
    p.add_argument("--curve-steps", type=int,
                   help="steps of the fp32-vs-fast-path loss-curve check; 0 skips it (default: 200; --quick: 4)")
    p.add_argument("--curve-schedule", choices=("recipe", "constant"), default="recipe",
                   help="learning rate of the curve runs: 'recipe' = the config's schedule over its max_steps "
                        "(what the first steps of a real run get, warm-up included), 'constant' = its peak lr "
                        "(default: %(default)s)")
    p.add_argument("--curve-threads", type=int,
                   help="torch threads of the curve runs (default: the largest --threads value)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, memory items and data (default: 0)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help="folder for bench_train_<device>_<UTC timestamp>.json/.md/_curve.png "
                        "(default: benchmarks/results in the repository)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run in seconds: batch 2, crop 32, 1 warm-up + 2 timed steps, 2 data batches, a 4-step "
                        "curve, compile cases skipped unless --compile (explicit options still win)")
    args = p.parse_args(argv)
    defaults = {"warmup": 2, "steps": 5, "curve_steps": 200, "data_batches": 20}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else value)
    if args.quick:
        for name in ("batch", "crop"):
            if getattr(args, name) is None:
                setattr(args, name, QUICK[name])
    if args.compile is None:
        args.compile = not args.quick
    for name in ("warmup", "curve_steps"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("steps", "data_batches"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads is None:
        usable = harness.cpu_info()["usable_cpus"] or 1
        args.threads = [t for t in (1, 2) if t <= usable]
    if any(t < 1 for t in args.threads):
        p.error("--threads values must be >= 1")
    args.threads = list(dict.fromkeys(args.threads))  # duplicates would make duplicate case ids
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = harness.torch_device(args.device)
    t_start = time.perf_counter()
    other_total = OtherLoad()
    env = environment(device)
    threads_at_start = torch.get_num_threads()
    cfg = resolve_config(args.config)
    batch = args.batch or cfg.batch_size
    crop = args.crop or cfg.crop_size
    if batch < 1 or crop < 8:
        print("error: --batch must be >= 1 and --crop >= 8", file=sys.stderr)
        return 2
    harness.configure_compile(64)
    errors: list[str] = []

    cases = build_cases(args.threads, device.type)
    wanted = None if args.cases is None else {c.strip() for c in args.cases.split(",") if c.strip()}
    if wanted is not None and wanted - {c.id for c in cases}:
        print(f"error: unknown --cases {sorted(wanted - {c.id for c in cases})}; ids here: "
              f"{[c.id for c in cases]}", file=sys.stderr)
        return 2
    where = env["gpu"]["name"] if device.type == "cuda" else env["cpu"]["line"]
    log(f"mgid bench_train: {where}, torch {env['torch']}, config {args.config}, batch {batch}, "
        f"crop {crop}, threads {args.threads}, {len(cases)} cases" + (" (--quick)" if args.quick else ""))

    ds = make_dataset(None, "train", crop, args.seed, embedded=cfg.embedded)
    data_set = f"{type(ds).__name__}, {len(ds)} pairs per epoch"

    # -- data loading, first: its workers end before any step is timed
    loading = []
    for k in args.workers:
        row = measure_loader(ds, batch, k, args.data_batches, args.threads[0])
        loading.append(row)
        log(f"  data, {k} workers: " + (f"{row['pairs_per_s']:.1f} pairs/s ({row['s_per_batch']:.3f} s/batch)"
                                       if row["status"] == "ok" else f"failed: {row['error']}"))
        if row["status"] != "ok":
            errors.append(f"data loading with {k} workers: {row['error']}")

    # -- batches, rendered once: the first ones are the step cases' and the curve's
    torch.set_num_threads(args.threads[0])
    n_time = max(args.warmup, 1) + args.steps
    t0 = time.perf_counter()
    rendered = render_batches(ds, batch, max(n_time, args.curve_steps))
    log(f"  rendered {len(rendered)} batches in {time.perf_counter() - t0:.1f} s")
    time_batches = [(to_float_batch(a).to(device), to_float_batch(b).to(device)) for a, b in rendered[:n_time]]

    # -- the step cases
    rows: list[dict[str, Any]] = []
    for case in cases:
        if wanted is not None and case.id not in wanted:
            rows.append({**case.settings(), "status": "not run", "error": "not in --cases"})
            continue
        if case.compile and not args.compile:
            why = "--quick runs no compile case (add --compile)" if args.quick else "--no-compile"
            rows.append({**case.settings(), "status": "skipped", "error": why})
            continue
        log(f"  case {case.id} ({case.label}) ...")
        row = run_case(case, cfg, time_batches, args.warmup, args.steps, args.seed, device)
        rows.append(row)
        if row["status"] == "ok":
            extra = f", compile {row['compile_s']:.1f} s" if row.get("compile_s") is not None else ""
            log(f"    {row['median_s']:.3f} s/step, {row['images_per_s']:.1f} images/s{extra}")
        else:
            log(f"    failed: {row['error']}")
            errors.append(f"case {case.id}: {row['error']}")
    base = next((r for r in rows if r["id"] == "baseline" and r["status"] == "ok"), None)
    for r in rows:
        if base and r["status"] == "ok":
            r["speedup_vs_baseline"] = base["median_s"] / r["median_s"]
    data_summary = add_data_verdicts(rows, loading, batch)

    # -- loss curves
    curve_threads = args.curve_threads or max(args.threads)
    out_base = harness.report_base(args.out, f"bench_train_{device.type}")
    if args.curve_steps == 0:
        curve: dict[str, Any] = {"status": "skipped", "reason": "--curve-steps 0"}
    else:
        batches = rendered[:args.curve_steps]
        note = (f"the `{args.config}` schedule's first {args.curve_steps} of {cfg.max_steps or args.curve_steps} steps "
                f"({cfg.optim.schedule}, {cfg.optim.warmup_steps} warm-up steps, peak {cfg.optim.lr:g})"
                if args.curve_schedule == "recipe" else f"constant {cfg.optim.lr:g}")
        log(f"  loss curves: {args.curve_steps} steps each, fp32 then fast path ...")
        fp32 = train_curve(cfg, batches, args.seed, "fp32", False, curve_threads, args.curve_schedule, device)
        fast = train_curve(cfg, batches, args.seed, "bf16", True, curve_threads, args.curve_schedule, device)
        curve = {"status": "ok" if fp32["status"] == fast["status"] == "ok" else "failed", "steps": args.curve_steps,
                 "threads": curve_threads, "schedule": args.curve_schedule, "schedule_note": note,
                 "fp32": fp32, "fast": fast, "stats": curve_stats(fp32["losses"], fast["losses"]),
                 "plot": None, "plot_note": None}
        for name, run in (("fp32", fp32), ("fast", fast)):
            if run["status"] != "ok":
                errors.append(f"curve {name}: {run['error']}")
        st = curve["stats"]
        if st.get("steps_compared"):
            try:
                png = plot_curves({"fp32 eager": fp32["losses"], "bf16 + channels_last + fused": fast["losses"]},
                                  out_base.parent / (out_base.name + "_curve.png"),
                                  f"MGID total loss, batch {batch}, crop {crop}, seed {args.seed} "
                                  f"(grey: last half, mean |diff| {st['mean_abs_diff']:.4f})",
                                  st["last_half_from_step"])
                curve["plot"] = png.name
            except Exception as err:  # noqa: BLE001 - the numbers stand without the picture
                curve["plot_note"] = short_error(err)
        else:
            curve["plot_note"] = "no step to plot"
    ops.set_ops_mode(None)
    torch.set_num_threads(threads_at_start)

    frac = other_total.fraction()
    result: dict[str, Any] = {
        "schema": 1,
        "benchmark": "mgid bench_train",
        "device": device.type,
        "environment": env,
        "settings": {"config": args.config, "batch": batch, "crop": crop, "warmup": args.warmup, "steps": args.steps,
                     "threads": args.threads, "workers": args.workers, "data_batches": args.data_batches,
                     "compile": args.compile, "cases": args.cases, "curve_steps": args.curve_steps,
                     "curve_schedule": args.curve_schedule, "curve_threads": curve_threads, "seed": args.seed,
                     "quick": args.quick, "model": dataclasses.asdict(cfg.model), "loss": dataclasses.asdict(cfg.loss),
                     "config_num_workers": cfg.num_workers, "config_precision": cfg.precision,
                     "config_channels_last": cfg.channels_last},
        "data_set": data_set,
        "cases": rows,
        "data_loading": loading,
        "data_summary": data_summary,
        "curve": curve,
        "auto": auto_verdict(rows, device.type),
        "errors": errors,
        "loadavg_end": harness.loadavg(),
        "other_load_share": frac,
        "busy_machine": frac is not None and frac > BUSY_SHARE,
        "elapsed_s": round(time.perf_counter() - t_start, 1),
    }
    md = markdown_report(result)
    harness.write_report(out_base, result, md)
    print(md)
    log(f"wrote {out_base}.md and {out_base}.json ({result['elapsed_s']} s)")
    return 0 if base else 1


if __name__ == "__main__":
    sys.exit(main())
