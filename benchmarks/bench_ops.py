#!/usr/bin/env python
"""Benchmark of mgid's memory and whitening ops against their peers.

Over ~400 lines on purpose: one script, the op benchmark's command line, run and report; its op cases
already live in bench_memory.py and bench_whitening.py (their shared shapes and case builders in op_cases.py),
its timer and report files in harness.py.

Per shape, for the memory step (read + update + losses) and for read, update and losses alone,
forward and forward+backward, it times:

* ``fused``     the public ``mgid.ops`` functions (compiled kernels where built; the table says
                which path ran, from ``mgid.ops.op_path``);
* ``reference`` the same calls inside ``mgid.ops.use_reference()`` (eager, vectorised PyTorch);
* ``compile``   ``torch.compile`` of the reference functions (skipped, with the reason, where it
                fails or where ``--compile`` leaves it out);
* ``sdpa``      ``F.scaled_dot_product_attention`` as a read baseline (q_hat as query, items as keys
                and values, scale 1), plus the normalisation and the concat, so it returns what the
                read returns;
* ``loop``      the per-item Python loop of the public MNAD/MGID code (`benchmarks.public_loop`);

and, for the covariance + BSW loss at the training shape, the fused and reference ops against a
bare ``torch.bmm`` of the covariance's shape, (B, C, HW) x (B, HW, C) (and the GEMM floor of the
whole pass: both frames' bmm, forward and backward).

Timing: warm-up, then samples of one call each on CUDA (CUDA events, an L2 flush by writing a
256 MB buffer before each call) or of enough calls to last ~2 ms on the CPU; median and
inter-quartile range. Achieved GB/s = bytes an ideal fused op reads and writes (model in the
JSON) / median time. Speed-ups are peer time / fused time (> 1: fused is faster).

Writes ``bench_ops_<device kind>_<date>.md`` and ``.json`` under ``--out`` and prints the table.
On a machine without CUDA it times the CPU paths and says that the CUDA rows were not measured.

The op families live one a file: ``bench_memory.py`` (memory step, read, update, losses) and
``bench_whitening.py`` (covariance, BSW mask, covariance + BSW loss); the timer, environment
capture and report files are ``harness.py``'s. This file is the entry that runs both.

Run from the repository root with the package installed (``pip install -e .``) or on
``PYTHONPATH``: ``python -m benchmarks.bench_ops --quick`` (or ``mgid bench --quick``, which runs the same).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch

import mgid.ops as ops
from benchmarks import harness
from benchmarks.bench_memory import Compiled, memory_cases, memory_checks, memory_targets
from benchmarks.bench_whitening import bsw_cases, bsw_checks, bsw_targets
from benchmarks.harness import BUSY_SHARE
from benchmarks.op_cases import SHAPES, Case, Shape

DEFAULT_SHAPES = {"cpu": "train,infer1k", "cuda": "train,infer1k,infer4k,mnad_large"}

# Columns of the table, in order: (key, header).
IMPLS: list[tuple[str, str]] = [
    ("fused", "fused"),
    ("reference", "reference (eager)"),
    ("compile", "torch.compile(ref)"),
    ("sdpa", "SDPA read"),
    ("loop", "per-item loop"),
    ("bmm", "bare bmm (fwd)"),
    ("bmm2_fb", "2x bmm fwd+bwd"),
]
IMPL_KEYS = [k for k, _ in IMPLS]

# Peak memory bandwidth (GB/s) used for the "% of peak" target when --peak-gbps is not given:
# Peak HBM bandwidth for the "% of peak" target: H100 3.0 TB/s (the design figure; SXM spec 3.35), H200 4.8 TB/s (spec).
PEAK_GBPS_BY_NAME = [("H200", 4800.0), ("H100", 3000.0)]


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """Everything a reader needs to place the numbers: the harness's record plus the op paths and CUDA."""
    env = harness.environment(short_commit=False)
    env["cpu"]["torch_threads"] = torch.get_num_threads()
    env.update({
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "ops_mode": harness.safe(ops.ops_mode),
        "fused_available": harness.safe(lambda: ops.fused_available(device)),
        "op_path": harness.safe(lambda: ops.op_path(device)),
        "loadavg": harness.loadavg(),
    })
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "multiprocessors": props.multi_processor_count,
                      "driver": harness.run_command(["nvidia-smi", "--query-gpu=driver_version",
                                                     "--format=csv,noheader"])}
        env["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def device_kind(device: torch.device) -> str:
    """'cpu' or 'cuda-<gpu name>' as a file-name-safe slug."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:40]


def fused_label(device: torch.device) -> tuple[str, str, bool]:
    """(what the fused column ran, a short form for the table, whether that is the reference)."""
    try:
        path = ops.op_path(device)
    except Exception as err:  # e.g. MGID_OPS=fused without the extension
        return f"unavailable ({err})", "unavailable", True
    if path == "PyTorch reference":
        if ops.ops_mode() == "reference":
            return "PyTorch reference (MGID_OPS=reference)", "reference (MGID_OPS)", True
        if not ops.build_info().get("extension"):
            return "PyTorch reference (extension not built)", "reference (not built)", True
        return f"PyTorch reference (no fused kernels for {device.type})", "reference (no kernel)", True
    short = {"fused CUDA kernels": "CUDA kernel", "fused C++ CPU kernels": "C++ CPU kernel"}.get(path, path)
    return path, short, False


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


class Notes:
    """Numbered footnotes for skipped cells (same text, same number)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def cell(row: dict[str, Any], notes: Notes, fused: bool) -> str:
    if row["status"] != "ok":
        if row["reason"] == "n/a" or (row["reason"] or "").startswith("n/a"):
            return "—"
        return f"{row['status']} {notes.ref(row['reason'])}"
    text = f"{fmt_time(row['median_s'])} ±{row['rel_iqr'] * 50:.0f}%"
    if not fused and row.get("speedup") is not None:
        text += f" ({row['speedup']:.2f}x)"
    return text


def markdown_report(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# mgid ops benchmark: {result['device_kind']}, {env['date_utc']}", ""]
    dev = env.get("gpu", {}).get("name") if result["device"] == "cuda" else f"CPU: {env['cpu']['line']}"
    lines += [
        f"- device: {dev}; CPUs {env['cpu']['usable_cpus']} usable, torch threads {env['cpu']['torch_threads']}",
        f"- torch {env['torch']}, CUDA (torch build) {env['torch_cuda']}, python {env['python']}",
        f"- commit: {env['git']['commit']}" + (" (working tree dirty)" if env['git']['dirty'] else ""),
        f"- mgid build: {json.dumps(env['build_info'])}",
        f"- fused column ran: **{result['fused_path']}**"
        + (" — the fused column times the same code as the reference column" if result["fused_is_reference"] else ""),
        f"- dtype {result['settings']['dtype']}; timing: {result['settings']['timing']}",
        "- shapes: " + "; ".join(f"{n} = B{d['b']} C{d['c']} {d['h']}x{d['w']} M{d['m']}"
                                  for n, d in result["settings"]["shapes"].items())
        + (f"; BSW at {', '.join(result['settings']['bsw_shapes'])}, k {result['settings']['bsw_k']}"
           if result["settings"]["bsw_shapes"] else ""),
    ]
    other = env.get("other_processes_cpu_share")
    if other is not None and other > BUSY_SHARE:
        lines.append(f"- **warning**: other processes used {other:.0%} of the machine's CPU time during this run: "
                     "CPU times are inflated and noisy; ratios less so (the peers of a row are timed interleaved)"
                     + ("; with several torch threads on a busy machine, try --threads 1"
                        if result["device"] == "cpu" and env["cpu"]["torch_threads"] > 1 else ""))
    if not result["cuda_measured"]:
        lines.append(f"- **CUDA rows were not measured**: {result['cuda_not_measured_reason']}")
    lines += ["", "Cells: median ± half the inter-quartile range (as % of the median); "
              "(Nx) = peer time / fused time, above 1 the fused op is faster. "
              "GB/s = bytes an ideal fused op moves / fused median (model in the JSON). — = not applicable.", ""]
    notes = Notes()
    on_cuda = result["device"] == "cuda"
    header = ["shape", "op", "pass", "fused path"] + [h for _, h in IMPLS] + ["fused GB/s"]
    if on_cuda:
        header.append("host syncs (fused/ref/loop)")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    short_path = result["fused_path_short"]
    for case in result["cases"]:
        by_impl = {r["impl"]: r for r in case["rows"]}
        cells = [case["shape"], case["op"], case["pass"], short_path]
        for key in IMPL_KEYS:
            r = by_impl.get(key)
            cells.append(cell(r, notes, key == "fused") if r else "—")
        fused = by_impl.get("fused")
        cells.append(f"{fused['gbps']:.1f}" if fused and fused.get("gbps") else "-")
        if on_cuda:
            syncs = [by_impl.get(k, {}).get("host_syncs") for k in ("fused", "reference", "loop")]
            cells.append("/".join("-" if x is None else str(x) for x in syncs))
        lines.append("| " + " | ".join(cells) + " |")
    if notes.texts:
        lines += [""] + [f"[{i + 1}] {t}" for i, t in enumerate(notes.texts)]
    if result["targets"]:
        lines += ["", "## Targets (docs/OPS.md)", ""]
        if result.get("busy_machine"):
            lines += ["Not reliable: other processes were busy on this machine during the run (see the warning "
                      "above); rerun on an idle machine"
                      + (" or with --threads 1." if env["cpu"]["torch_threads"] > 1 else "."), ""]
        lines += ["| target | measured | threshold | met |", "|---|---|---|---|"]
        for t in result["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            if t["met"] is not None and not t.get("reliable", True):
                met += " (unreliable)"
            meas = "-" if t["measured"] is None else f"{t['measured']:.3g}{t.get('unit', '')}"
            lines.append(f"| {t['target']} | {meas} | {t['threshold']} | {met} |")
    step = result.get("train_step")
    if step:
        lines += ["", f"## Training step ({step['recipe']} recipe: {step['label']}, batch {step['batch']}, crop "
                      f"{step['crop']}, {step['threads']} thread(s); median of {step['steps']} alternating steps)", "",
                  "| ops | s / step | reference / fused |", "|---|---|---|",
                  f"| {step['fused_path']} | {step['fused_s']:.3f} | |",
                  f"| PyTorch reference | {step['reference_s']:.3f} | {step['ratio']:.2f}x |"]
    lines += ["", "## Checks (max |difference| against the reference, one call)", ""]
    for chk in result["checks"]:
        lines.append(f"- {chk['shape']} {chk['what']}: " + json.dumps({k: v for k, v in chk.items()
                                                                       if k not in ('shape', 'what')}))
    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"



def time_train_step(recipe: str, steps: int, seed: int) -> dict[str, Any]:
    """`benchmarks.step_time.time_ops_paths` at ``recipe``'s batch, crop and resolved arithmetic."""
    from benchmarks.step_time import time_ops_paths
    from mgid.config.train_config import resolve_config
    from mgid.precision import CHANNELS_LAST_SETTINGS, resolve_arithmetic

    cfg = resolve_config(recipe)
    arithmetic = resolve_arithmetic(cfg.precision, CHANNELS_LAST_SETTINGS[cfg.channels_last], "cpu")
    variant = arithmetic.precision + ("+cl" if arithmetic.channels_last else "")
    timed = time_ops_paths(variant, cfg.batch_size, cfg.crop_size, warmup=2, steps=steps, seed=seed)
    print(f"  training step ({recipe} recipe, {variant}, batch {cfg.batch_size}, crop {cfg.crop_size}): fused "
          f"{fmt_time(timed['fused_s'])}, reference {fmt_time(timed['reference_s'])} ({timed['ratio']:.2f}x)",
          file=sys.stderr)
    return {"recipe": recipe, **timed}


def evaluate_targets(result: dict[str, Any], peak_gbps: float | None, k: int) -> list[dict[str, Any]]:
    """The docs/OPS.md / issue targets of both families, evaluated from the measured rows only."""
    return memory_targets(result, peak_gbps) + bsw_targets(result, k)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_ops",
        description="Time mgid's memory and whitening ops (fused / eager reference / torch.compile / SDPA / "
                    "per-item loop / bmm) and write a markdown table and a JSON file.",
)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device to time on; auto = cuda when available, else cpu (default: %(default)s)")
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated shapes from {list(SHAPES)}; default {DEFAULT_SHAPES['cpu']} on CPU, "
                        f"{DEFAULT_SHAPES['cuda']} on CUDA, train with --quick")
    p.add_argument("--bsw-shapes", default="train",
                   help="comma-separated shapes at which to time covariance + BSW loss (B, C, h, w of the shape), "
                        "or 'none' (default: %(default)s)")
    p.add_argument("--bsw-k", type=int, default=50, help="number of 1-D k-means clusters of the BSW mask (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="samples per measurement (default 15 on CPU, 50 on CUDA, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement (default 3, 1 with --quick)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop sampling a measurement after this many seconds, once it has 3 samples "
                        "(default 1.0; 0.25 with --quick)")
    p.add_argument("--compile", default="auto",
                   help="where to time torch.compile(reference): 'all' shapes, 'none', or a comma-separated list of "
                        "shapes; auto = all on CUDA, train on CPU (compiling takes ~30 s a graph there), none with "
                        "--quick (default: %(default)s)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for the compile peer: default, reduce-overhead, max-autotune, ... "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                   help="dtype of queries, items and features (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs (default: torch's)")
    p.add_argument("--impls", default=",".join(IMPL_KEYS),
                   help="comma-separated implementations to time, others are reported as not requested "
                        "(default: %(default)s)")
    p.add_argument("--no-l2-flush", action="store_true", help="do not flush the L2 cache before each CUDA sample")
    p.add_argument("--no-sync-count", action="store_true",
                   help="do not count host syncs per call on CUDA (torch.cuda.set_sync_debug_mode)")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="peak memory bandwidth for the bandwidth target; default from the GPU name "
                        "(H100 3000, H200 4800), none otherwise")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")
    p.add_argument("--out", default=str(harness.RESULTS),
                   help="folder for the markdown and JSON results (default: benchmarks/results in the repository)")
    p.add_argument("--train-step", choices=("quick", "none"), default="quick",
                   help="also time a training step of this recipe's shape and arithmetic with the fused ops and with "
                        "the PyTorch reference, alternating (CPU only; 'none' skips it) [%(default)s]")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: train shape, few samples, no torch.compile (~30 s on 2 CPU cores)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    kind = device.type
    if args.threads:
        torch.set_num_threads(args.threads)
    shape_names = [s for s in (args.shapes or ("train" if args.quick else DEFAULT_SHAPES[kind])).split(",") if s]
    bsw_names = [] if args.bsw_shapes.strip().lower() == "none" else [s for s in args.bsw_shapes.split(",") if s]
    for s in shape_names + bsw_names:
        if s not in SHAPES:
            print(f"error: unknown shape {s!r}; choose from {list(SHAPES)}", file=sys.stderr)
            return 2
    requested = set(x for x in args.impls.split(",") if x)
    unknown = requested - set(IMPL_KEYS)
    if unknown:
        print(f"error: unknown --impls {sorted(unknown)}; choose from {IMPL_KEYS}", file=sys.stderr)
        return 2
    repeats = args.repeats or (5 if args.quick else (50 if kind == "cuda" else 15))
    warmup = args.warmup or (1 if args.quick else 3)
    max_seconds = args.max_seconds or (0.25 if args.quick else 1.0)
    compile_where = args.compile.strip().lower()
    if compile_where == "auto":
        compile_where = "none" if args.quick else ("all" if kind == "cuda" else "train")
    compile_shapes = (set(shape_names) if compile_where == "all" else set() if compile_where == "none"
                      else {x for x in compile_where.split(",") if x})
    if compile_shapes - set(SHAPES):
        print(f"error: --compile {args.compile!r}: expected auto, all, none or shapes from {list(SHAPES)}",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    timer = harness.BenchTimer(device, repeats, warmup, max_seconds, flush_l2=not args.no_l2_flush)
    harness.configure_compile(256, in_process=kind == "cpu" or (os.cpu_count() or 1) <= 4)
    compiled = Compiled(args.compile_mode)

    path_label, path_short, fused_is_reference = fused_label(device)
    cuda_reason = None
    if kind != "cuda":
        cuda_reason = ("--device cpu was given" if torch.cuda.is_available()
                       else "no CUDA device on this machine (torch.cuda.is_available() is False)")
    peak = args.peak_gbps
    if peak is None and kind == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for key, v in PEAK_GBPS_BY_NAME if key in name), None)

    print(f"mgid bench_ops on {kind} ({torch.cuda.get_device_name(device) if kind == 'cuda' else harness.cpu_info()['line']}); "
          f"fused path: {path_label}; shapes {shape_names}; torch.compile: {compile_where}", file=sys.stderr)
    if cuda_reason:
        print(f"CUDA rows were not measured: {cuda_reason}", file=sys.stderr)

    t_start = time.perf_counter()
    load_start = harness.loadavg()
    other_load = harness.OtherLoad()
    all_cases: list[tuple[Case, Shape]] = []
    checks: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in shape_names:
        shape = SHAPES[name]
        if name in compile_shapes:
            use_compile: bool | str = True
        elif compile_where == "none":
            use_compile = "not run: --compile none" + (" (--quick)" if args.quick else "")
        else:
            use_compile = f"not run: --compile {compile_where} (--compile all to time it here)"
        try:
            cases, inputs = memory_cases(shape, device, dtype, use_compile, compiled, args.seed)
            checks.append(memory_checks(shape, inputs["q"], inputs["items"]))
        except Exception as err:  # e.g. out of memory at a large shape
            errors.append(f"{name}: could not set up the memory cases: {type(err).__name__}: {err}")
            continue
        all_cases += [(c, shape) for c in cases]
    for name in bsw_names:
        shape = SHAPES[name]
        try:
            cases, inputs = bsw_cases(shape, device, dtype, args.bsw_k, args.seed)
            checks.append(bsw_checks(shape, inputs["f1"], inputs["f2"], args.bsw_k))
        except Exception as err:
            errors.append(f"{name}: could not set up the BSW cases: {type(err).__name__}: {err}")
            continue
        all_cases += [(c, shape) for c in cases]

    case_results: list[dict[str, Any]] = []
    for case, shape in all_cases:
        by_impl: dict[str, dict[str, Any]] = {}
        to_time: dict[str, Callable[[], Any]] = {}
        for impl in IMPL_KEYS:
            fn = case.impls.get(impl, "n/a")
            row: dict[str, Any] = {"impl": impl, "status": "ok", "reason": None}
            if isinstance(fn, str) and fn.startswith("n/a"):
                row.update(status="skipped", reason=fn)
            elif impl not in requested:
                row.update(status="skipped", reason="not requested (--impls)")
            elif impl == "fused" and path_label.startswith("unavailable"):
                row.update(status="skipped", reason=path_label)
            elif isinstance(fn, str):
                row.update(status="skipped", reason=fn)
            else:
                to_time[impl] = fn
            by_impl[impl] = row
        timings = timer.measure_many(to_time) if to_time else {}
        for impl, res in timings.items():
            row = by_impl[impl]
            if isinstance(res, Exception):
                msg = str(res).strip().splitlines()[0][:200] if str(res).strip() else ""
                row.update(status="error", reason=f"{type(res).__name__}: {msg}")
                errors.append(f"{case.shape} {case.op} {case.pass_} {impl}: {type(res).__name__}: {msg}")
                if os.environ.get("MGID_BENCH_TRACEBACK"):
                    traceback.print_exception(res)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            row.update({f: getattr(res, f) for f in ("median_s", "p25_s", "p75_s", "min_s", "max_s", "samples",
                                                     "calls_per_sample", "first_call_s")})
            row["rel_iqr"] = res.rel_iqr
            if case.bytes_ideal:
                row["gbps"] = case.bytes_ideal / res.median_s / 1e9
            if impl == "fused":
                row["path"] = path_label
            if not args.no_sync_count and device.type == "cuda":
                try:
                    row["host_syncs"] = harness.count_host_syncs(to_time[impl], device)
                except Exception as err:  # noqa: BLE001
                    row["host_syncs"] = None
                    row["host_syncs_error"] = f"{type(err).__name__}: {err}"
        rows = [by_impl[k] for k in IMPL_KEYS]
        for row in rows:
            if row["status"] == "ok":
                shown = fmt_time(row["median_s"])
            elif (row["reason"] or "").startswith("n/a"):
                continue
            else:
                shown = f"{row['status']}: {row['reason']}"
            print(f"  {case.shape:10s} {case.op:18s} {case.pass_:8s} {row['impl']:10s} {shown}", file=sys.stderr)
        fused_row = next((r for r in rows if r["impl"] == "fused" and r["status"] == "ok"), None)
        for r in rows:
            if fused_row and r["status"] == "ok":
                r["speedup"] = r["median_s"] / fused_row["median_s"]
        case_results.append({"shape": case.shape, "shape_desc": shape.describe(), "op": case.op, "pass": case.pass_,
                             "bytes_ideal": case.bytes_ideal, "bytes_model": case.bytes_note, "rows": rows})

    result: dict[str, Any] = {
        "schema": 1,
        "benchmark": "mgid bench_ops",
        "device": kind,
        "device_kind": device_kind(device),
        "environment": environment(device),
        "fused_path": path_label,
        "fused_path_short": path_short,
        "fused_is_reference": fused_is_reference,
        "cuda_measured": kind == "cuda",
        "cuda_not_measured_reason": cuda_reason,
        "settings": {
            "shapes": {n: dataclasses.asdict(SHAPES[n]) for n in shape_names},
            "bsw_shapes": bsw_names, "bsw_k": args.bsw_k, "dtype": args.dtype, "compile": compile_where,
            "compile_mode": args.compile_mode, "repeats": repeats, "warmup": warmup, "max_seconds": max_seconds,
            "quick": args.quick, "impls": sorted(requested), "peak_gbps": peak,
            "timing": ("CUDA events, one call per sample" + ("" if args.no_l2_flush else ", 256 MB L2 flush before each")
                       if kind == "cuda" else "perf_counter, samples of >= 2 ms of back-to-back calls")
                      + f", up to {repeats} samples or {max_seconds} s after {warmup} warm-up call(s)",
            "fwd_means": "inputs without requires_grad, under torch.no_grad()",
            "fwd_bwd_means": "query/features require grad; backward from every differentiable output "
                             "(read output with a random grad, each loss with grad 1)",
        },
        "cases": case_results,
        "checks": checks,
        "errors": errors,
        "elapsed_s": None,
    }
    result["environment"]["loadavg_start"] = load_start
    frac = other_load.fraction()
    result["environment"]["other_processes_cpu_share"] = frac
    result["busy_machine"] = frac is not None and frac > BUSY_SHARE
    result["train_step"] = None
    if args.train_step != "none" and kind == "cpu" and not fused_is_reference:
        result["train_step"] = time_train_step(args.train_step, steps=3 if args.quick else 7, seed=args.seed)
    result["targets"] = evaluate_targets(result, peak, args.bsw_k)
    if result["train_step"]:
        ratio = result["train_step"]["ratio"]
        result["targets"].append({"target": f"training step ({args.train_step} recipe): reference / fused time "
                                            "(issue 26)", "measured": ratio, "unit": "x", "threshold": "<= 2x",
                                  "met": ratio <= 2.0})
    for target in result["targets"]:
        target["reliable"] = not result["busy_machine"]
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    md = markdown_report(result)
    base = harness.report_base(args.out, f"bench_ops_{result['device_kind']}")
    harness.write_report(base, result, md)
    print(md)
    print(f"wrote {base}.md and {base}.json ({result['elapsed_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
