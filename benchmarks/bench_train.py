#!/usr/bin/env python
"""Training throughput of the MGID step on this CPU, per setting, in one run.

It times `mgid.training.train_step` (both frames forward, the loss, backward, Adam) with the model
and loss of a named config (default ``cpu``, the recipe of the shipped weights) and reports the
median seconds per step and training images per second (two frames per pair: ``2 * batch / s``)
for these settings, one factor at a time from a baseline (fp32, contiguous, eager, fused ops,
the first ``--threads`` value):

* precision: fp32 vs bf16 autocast (``train_step(..., precision="bf16")``);
* memory format: contiguous vs channels_last (network and inputs);
* eager vs ``torch.compile(net)`` (compile time reported apart: it is in the first warm-up step);
* mgid ops: fused kernels vs the PyTorch reference (``mgid.ops.set_ops_mode``);
* intra-op threads (``torch.set_num_threads``): the other ``--threads`` values;

plus the recipe's combination (bf16 + channels_last + fused, eager) and that combination
compiled, each at every ``--threads`` value. The full cross product is left out: it would take
hours on a small CPU and one-factor rows already say what each setting buys.

Data loading is timed apart: pairs per second that the training set (`mgid.data.make_dataset`,
the streamed `StreamingTimeLapse` for the embedded data) delivers through a
``DataLoader(batch_size=B, num_workers=k)`` for each ``--workers`` k, compared with the pairs per
second each case consumes, so the table says whether data is ever the bottleneck. Every step
case trains on batches rendered once before timing (so the step times hold no data loading).

A loss-curve check (``--curve-steps``) trains fp32 eager and the fast path (bf16 +
channels_last + fused ops) from the same seed on the same batches and compares the curves.

Writes ``bench_train_cpu_<UTC timestamp>.json`` / ``.md`` (and ``_curve.png``) under ``--out``
and prints the report. A case that fails (e.g. torch.compile without a working C++ compiler)
is reported as failed with its error; the run goes on.

Run from the repository root: ``python benchmarks/bench_train.py --quick``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from harness import BUSY_SHARE, OtherLoad, log, quantile
from torch.utils.data import DataLoader, Dataset, Subset

import mgid.ops as ops
from mgid.config import NAMED_CONFIGS, TrainConfig, named_config
from mgid.data import make_dataset
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet
from mgid.training import PairForward, learning_rate, seed_everything, train_step

DEFAULT_OUT = harness.RESULTS
#: Settings of --quick (each can still be overridden by its own option).
QUICK = {"batch": 2, "crop": 32, "warmup": 1, "steps": 2, "curve_steps": 4, "data_batches": 2}
#: Characters of an error message kept in the table (the JSON keeps the full message).
ERROR_CHARS = 160


# --------------------------------------------------------------------------------------------------
# environment


def environment() -> dict[str, Any]:
    """The harness's record (CPU, flags, torch, git, build_info, load) plus OpenCV's thread count."""
    env = harness.environment()
    try:
        import cv2

        env["cv2_threads"] = cv2.getNumThreads()
    except Exception:  # noqa: BLE001
        env["cv2_threads"] = None
    return env


# --------------------------------------------------------------------------------------------------
# cases and data


@dataclasses.dataclass(frozen=True)
class Case:
    """One timed setting of the training step."""

    id: str
    label: str
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    ops: str = "fused"
    threads: int = 1

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_cases(threads: Sequence[int]) -> list[Case]:
    """Baseline, one factor at a time, then the recipe (eager and compiled) at every thread count.

    The compiled cases come last so that no eager number is taken right after a compilation.
    """
    t0 = threads[0]
    cases = [
        Case("baseline", "baseline", threads=t0),
        Case("bf16", "bf16 autocast", precision="bf16", threads=t0),
        Case("channels_last", "channels_last", channels_last=True, threads=t0),
        Case("reference_ops", "reference ops", ops="reference", threads=t0),
    ]
    cases += [Case(f"threads_{t}", f"{t} threads", threads=t) for t in threads[1:]]
    cases += [Case(f"recipe_{t}t", f"recipe, {t} thread{'s' if t > 1 else ''}", precision="bf16",
                   channels_last=True, threads=t) for t in threads]
    cases.append(Case("compiled", "torch.compile", compile=True, threads=t0))
    cases += [Case(f"recipe_compiled_{t}t", f"recipe compiled, {t} thread{'s' if t > 1 else ''}",
                   precision="bf16", channels_last=True, compile=True, threads=t) for t in threads]
    return cases


def to_uint8_batch(x: torch.Tensor) -> torch.Tensor:
    """A batch in [-1, 1] back to the uint8 it was made from (`mgid.data.to_tensor` is ``u / 127.5 - 1``).

    Exact for the data set's frames, and 4x smaller to keep a few hundred batches for the curve.
    """
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_float_batch(u8: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_uint8_batch`, the same arithmetic as `mgid.data.to_tensor` (bit-identical)."""
    return u8.to(torch.float32) / 127.5 - 1.0


def render_batches(ds: Dataset, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of consecutive samples (uint8 (B, 3, H, W) pairs), past the epoch end if need be."""
    n = len(ds)
    out = []
    for b in range(count):
        f1, f2 = [], []
        for j in range(b * batch, (b + 1) * batch):
            epoch, index = divmod(j, n)
            if hasattr(ds, "set_epoch") and getattr(ds, "epoch", epoch) != epoch:
                ds.set_epoch(epoch)
            item = ds[index]
            f1.append(item["frame1"])
            f2.append(item["frame2"])
        out.append((to_uint8_batch(torch.stack(f1)), to_uint8_batch(torch.stack(f2))))
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(0)
    return out


def short_error(err: BaseException) -> str:
    """``Type: first line of the message`` (the full message goes to the JSON)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}"


def build_training(cfg: TrainConfig, seed: int, channels_last: bool
                   ) -> tuple[MGIDNet, MGIDLoss, torch.optim.Optimizer]:
    """A fresh network (weights and memory items fixed by ``seed``), the loss and Adam, as `Trainer` builds them."""
    seed_everything(seed)
    net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(seed))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    o = cfg.optim
    optimizer = torch.optim.Adam(net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return net, MGIDLoss(cfg.loss), optimizer


def mgid_op_share(step: Any) -> dict[str, Any]:
    """Run ``step()`` once under the profiler; the share of its wall time in the compiled mgid ops.

    Counts each outermost ``mgid::`` operator call (forward and backward; a call nested in another,
    e.g. bsw_threshold inside bsw_mask, is part of its parent), grouped into the memory ops
    (``mgid::memory_*``) and the whitening ops (covariance, BSW mask and loss). The profiler's own
    overhead is in the wall time, so the shares are slight underestimates.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall_us = (time.perf_counter() - t0) * 1e6
    per_op: dict[str, float] = {}
    for evt in prof.events():
        if not evt.name.startswith("mgid::"):
            continue
        parent, nested = evt.cpu_parent, False
        while parent is not None:
            if parent.name.startswith("mgid::"):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            per_op[evt.name] = per_op.get(evt.name, 0.0) + evt.cpu_time_total
    memory = sum(v for k, v in per_op.items() if k.startswith("mgid::memory_"))
    whitening = sum(per_op.values()) - memory
    return {"profiled_step_s": wall_us / 1e6, "memory_share": memory / wall_us, "whitening_share": whitening / wall_us,
            "per_op_s": {k: round(v / 1e6, 5) for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])}}


def run_case(case: Case, cfg: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int,
             steps: int, seed: int) -> dict[str, Any]:
    """Time ``steps`` training steps of ``case`` after ``warmup`` ones; the row of the report.

    A step is what the training loop does per batch: the inputs to the case's memory format,
    `train_step` (both frames, the loss), the finiteness check (a sync) and ``apply`` (backward
    + Adam). Warm-up steps are timed too but kept out of the median; for a compiled case the
    first one holds the compilation.
    """
    row: dict[str, Any] = {**case.settings(), "status": "ok", "error": None}
    other = OtherLoad()
    torch.set_num_threads(case.threads)
    row["threads_actual"] = torch.get_num_threads()
    ops.set_ops_mode(case.ops)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    warmup = max(warmup, 1) if case.compile else warmup  # the compilation must not land in a timed step
    try:
        row["op_path"] = ops.op_path("cpu")  # raises here when "fused" cannot be honoured
        if case.compile:
            torch._dynamo.reset()  # each compiled case compiles its own net from scratch
        net, criterion, optimizer = build_training(cfg, seed, case.channels_last)
        model = torch.compile(net) if case.compile else net
        pair = PairForward(model)
        times: list[float] = []
        for i in range(warmup + steps):
            f1, f2 = batches[i % len(batches)]
            t0 = time.perf_counter()
            frame1 = f1.contiguous(memory_format=fmt)
            frame2 = f2.contiguous(memory_format=fmt)
            total, _terms, _out1, apply = train_step(net, criterion, optimizer, frame1, frame2, pair=pair,
                                                     precision=case.precision)
            value = float(total.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {i + 1}")
            apply()
            times.append(time.perf_counter() - t0)
        if case.ops == "fused" and not case.compile:
            def one_step() -> None:
                f1, f2 = batches[0]
                _total, _t, _o, step_apply = train_step(
                    net, criterion, optimizer, f1.contiguous(memory_format=fmt), f2.contiguous(memory_format=fmt),
                    pair=pair, precision=case.precision)
                step_apply()
            row["op_share"] = mgid_op_share(one_step)
        warm, timed = times[:warmup], times[warmup:]
        median = statistics.median(timed) if timed else (warm[-1] if warm else float("nan"))
        batch = batches[0][0].shape[0]
        row.update(
            warmup_steps=warmup, steps=len(timed), warmup_times_s=warm, step_times_s=timed,
            median_s=median, p25_s=quantile(timed, 0.25) if timed else None,
            p75_s=quantile(timed, 0.75) if timed else None, min_s=min(timed) if timed else None,
            first_step_s=times[0] if times else None,
            # compile time: what the first step took beyond a steady one (dynamo + inductor + C++ build)
            compile_s=max(times[0] - median, 0.0) if case.compile and times else None,
            images_per_s=2 * batch / median, pairs_per_s=batch / median, final_loss=value,
        )
    except Exception as err:  # noqa: BLE001 - a failed case is a row of the report, not the end of the run
        row.update(status="failed", error=short_error(err), error_full="".join(
            traceback.format_exception(type(err), err, err.__traceback__))[-4000:])
        if case.compile:
            harness.safe(torch._dynamo.reset)
    finally:
        ops.set_ops_mode(None)
    row["other_load_share"] = other.fraction()
    return row


def measure_loader(ds: Dataset, batch: int, workers: int, batches: int, threads: int) -> dict[str, Any]:
    """Pairs/s the data set delivers through ``DataLoader(batch_size=batch, num_workers=workers)``.

    The first batch (worker start-up) is timed apart; the rate is over the ``batches`` after it
    (workers prefetch while the first batch is awaited, so with many workers and few batches the
    rate is a little optimistic). The loader reads exactly the batches timed and then ends, so
    its workers are gone before the step cases run.
    """
    row: dict[str, Any] = {"workers": workers, "status": "ok", "error": None, "batches": batches}
    torch.set_num_threads(threads)
    other = OtherLoad()
    try:
        need = (batches + 1) * batch
        if len(ds) < need:
            raise ValueError(f"the data set has {len(ds)} pairs, fewer than the {need} needed; lower --data-batches")
        loader = DataLoader(Subset(ds, range(need)), batch_size=batch, num_workers=workers, shuffle=False,
                            drop_last=True)
        t0 = time.perf_counter()
        it = iter(loader)
        next(it)
        t1 = time.perf_counter()
        got = sum(1 for _ in it)
        t2 = time.perf_counter()
        del it
        row.update(first_batch_s=t1 - t0, timed_batches=got, s_per_batch=(t2 - t1) / got,
                   pairs_per_s=got * batch / (t2 - t1))
    except Exception as err:  # noqa: BLE001 - reported in the table
        row.update(status="failed", error=short_error(err))
    row["other_load_share"] = other.fraction()
    return row


def add_data_verdicts(cases: list[dict[str, Any]], loading: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Per case: images/s with loading in the main process (0 workers, serial) and the fewest workers
    whose loader outpaces the step; overall: whether data is ever the bottleneck."""
    rates = {r["workers"]: r for r in loading if r["status"] == "ok"}
    serial = rates.get(0)
    parallel = sorted(k for k in rates if k > 0)
    limited: list[str] = []
    for row in cases:
        if row["status"] != "ok":
            continue
        if serial:
            row["images_per_s_with_serial_loading"] = 2 * batch / (row["median_s"] + serial["s_per_batch"])
            row["serial_loading_share"] = serial["s_per_batch"] / (row["median_s"] + serial["s_per_batch"])
        if not parallel:  # no worker count >= 1 measured: nothing to say about overlapped loading
            continue
        keep_up = next((k for k in parallel if rates[k]["pairs_per_s"] >= row["pairs_per_s"]), None)
        row["workers_to_keep_up"] = keep_up
        if keep_up is None:
            limited.append(row["id"])
    ok_cases = [r for r in cases if r["status"] == "ok"]
    fastest = max(ok_cases, key=lambda r: r["pairs_per_s"], default=None)
    summary: dict[str, Any] = {"fastest_case": fastest["id"] if fastest else None,
                               "fastest_pairs_per_s": fastest["pairs_per_s"] if fastest else None,
                               "cases_data_bound_with_every_worker_count": limited}
    lines = []
    if fastest and serial:
        lines.append(f"With 0 workers (the config's num_workers default) loading runs between steps: "
                     f"{serial['s_per_batch']:.3f} s per batch, {100 * fastest['serial_loading_share']:.0f}% of "
                     f"each step of the fastest case ({fastest['id']}), {100 * min(r['serial_loading_share'] for r in ok_cases):.0f}"
                     f"-{100 * max(r['serial_loading_share'] for r in ok_cases):.0f}% over all cases.")
    if fastest and parallel:
        best = max(parallel, key=lambda k: rates[k]["pairs_per_s"])
        if limited:
            lines.append(f"Data IS the bottleneck with every worker count measured for: {', '.join(limited)} "
                         f"(best loader: {rates[best]['pairs_per_s']:.1f} pairs/s with {best} workers).")
        else:
            lines.append(f"With workers the loader outpaces every case: the fastest case consumes "
                         f"{fastest['pairs_per_s']:.1f} pairs/s; the loader delivers "
                         + ", ".join(f"{rates[k]['pairs_per_s']:.1f} with {k}" for k in parallel)
                         + " workers (measured alone: in training the workers share the cores with the step).")
    if not fastest or not rates:
        lines.append("No verdict: no step case or no loader measurement succeeded.")
    summary["verdict"] = " ".join(lines)
    return summary


# --------------------------------------------------------------------------------------------------
# loss curve


def train_curve(cfg: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int, precision: str,
                channels_last: bool, threads: int, schedule: str) -> dict[str, Any]:
    """Total loss per step of a run from ``seed`` on ``batches`` (fused ops, eager)."""
    torch.set_num_threads(threads)
    ops.set_ops_mode("fused")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        net, criterion, optimizer = build_training(cfg, seed, channels_last)
        pair = PairForward(net)
        horizon = cfg.max_steps or len(batches)
        for step, (u1, u2) in enumerate(batches):
            # the recipe's schedule at the start of a real run (warm-up), or its peak lr throughout
            lr = learning_rate(step, horizon, cfg.optim) if schedule == "recipe" else cfg.optim.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            frame1 = to_float_batch(u1).contiguous(memory_format=fmt)
            frame2 = to_float_batch(u2).contiguous(memory_format=fmt)
            total, _terms, _out, apply = train_step(net, criterion, optimizer, frame1, frame2, pair=pair,
                                                    precision=precision)
            value = float(total.detach())
            losses.append(value)
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {step + 1}")
            apply()
        return {"status": "ok", "error": None, "losses": losses, "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001
        return {"status": "failed", "error": short_error(err), "losses": losses, "seconds": time.perf_counter() - t0}
    finally:
        ops.set_ops_mode(None)


def curve_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean |a - b| and the mean of each over the last half of the steps both curves have."""
    n = min(len(a), len(b))
    start = n // 2
    if n == 0:
        return {"steps_compared": 0}
    x, y = np.asarray(a[start:n], dtype=np.float64), np.asarray(b[start:n], dtype=np.float64)
    mad = float(np.mean(np.abs(x - y)))
    mean_a, mean_b = float(x.mean()), float(y.mean())
    return {"steps_compared": n, "last_half_from_step": start + 1, "mean_abs_diff": mad,
            "mean_fp32": mean_a, "mean_fast": mean_b, "mean_diff_fast_minus_fp32": mean_b - mean_a,
            "relative_mean_abs_diff": mad / abs(mean_a) if mean_a else None,
            "std_fp32": float(x.std()), "first_step_abs_diff": abs(a[0] - b[0])}


def plot_curves(curves: dict[str, Sequence[float]], path: Path, title: str, half_from: int) -> Path:
    """A PNG of the loss curves drawn with OpenCV (matplotlib is not a dependency of mgid; cv2 is)."""
    import cv2

    width, height, left, right, top, bottom = 960, 480, 80, 20, 40, 50
    img = np.full((height, width, 3), 255, np.uint8)
    values = [v for c in curves.values() for v in c if math.isfinite(v)]
    n = max(len(c) for c in curves.values())
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def xy(i: int, v: float) -> tuple[int, int]:
        x = left + (width - left - right) * (i / max(n - 1, 1))
        y = top + (height - top - bottom) * (1.0 - (v - lo) / (hi - lo))
        return int(round(x)), int(round(y))

    # the last half, over which the statistics are taken, on a grey band
    x0, _ = xy(half_from - 1, lo)
    cv2.rectangle(img, (x0, top), (width - right, height - bottom), (235, 235, 235), -1)
    cv2.rectangle(img, (left, top), (width - right, height - bottom), (0, 0, 0), 1)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for k in range(6):
        v = lo + (hi - lo) * k / 5
        _, y = xy(0, v)
        cv2.line(img, (left - 4, y), (left, y), (0, 0, 0), 1)
        cv2.putText(img, f"{v:.3f}", (5, y + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for k in range(6):
        i = round((n - 1) * k / 5)
        x, _ = xy(i, lo)
        cv2.line(img, (x, height - bottom), (x, height - bottom + 4), (0, 0, 0), 1)
        cv2.putText(img, str(i + 1), (x - 8, height - bottom + 18), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "step", (width // 2 - 15, height - 10), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 25), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    colours = [(200, 80, 0), (0, 0, 220)]  # BGR: blue, red
    # the first curve thicker, so that where the two coincide both stay visible
    for (name, curve), colour, row in zip(curves.items(), colours, range(len(curves))):
        pts = np.array([xy(i, v) for i, v in enumerate(curve) if math.isfinite(v)], np.int32)
        if len(pts) > 1:
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 3 if row == 0 else 1, cv2.LINE_AA)
        elif len(pts) == 1:
            cv2.circle(img, tuple(int(c) for c in pts[0]), 3, colour, -1)
        ly = top + 20 + 18 * row
        cv2.line(img, (width - right - 260, ly - 4), (width - right - 230, ly - 4), colour, 2)
        cv2.putText(img, name, (width - right - 222, ly), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cv2.imwrite could not write {path}")
    return path


# --------------------------------------------------------------------------------------------------
# report


def _f(value: Any, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def markdown_report(result: dict[str, Any]) -> str:
    """The report: environment, the step table, the data-loading table, the loss-curve check."""
    env, s = result["environment"], result["settings"]
    cpu = env["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of " + ", ".join(cpu["flags"])
    lines = [
        f"# MGID training throughput on the CPU ({env['date_utc']})",
        "",
        f"- CPU: {cpu['model']} ({cpu['usable_cpus']} usable of {cpu['cpu_count']} CPUs; flags: {flags}; "
        f"torch CPU capability {env['cpu_capability']})",
        f"- torch {env['torch']}, Python {env['python']}, git {env['git']['commit']}"
        + (" (uncommitted changes)" if env["git"]["dirty"] else "")
        + f", mgid ops build: {env['build_info']}",
        f"- model/loss of config `{s['config']}`; batch {s['batch']} pairs of {s['crop']}x{s['crop']} "
        f"(= {2 * s['batch']} images per step); {s['warmup']} warm-up + {s['steps']} timed steps per case; "
        f"threads {s['threads']}; seed {s['seed']}" + (" (--quick)" if s["quick"] else ""),
        f"- load average {env['loadavg_start']} at the start, {result['loadavg_end']} at the end; other "
        f"processes used {_f(result['other_load_share'], '.0%')} of the machine's CPU time during the run",
        "",
    ]
    if result["busy_machine"]:
        lines += [f"**Warning: the machine was busy** (other processes used more than {BUSY_SHARE:.0%} of its CPU "
                  "time): the absolute numbers are low and the ratios are noisy. Rerun on an idle machine.", ""]
    base = next((r for r in result["cases"] if r["id"] == "baseline" and r["status"] == "ok"), None)
    lines += [
        "## Training step",
        "",
        "| case | precision | memory format | exec | ops | threads | s/step (median) | IQR | images/s | vs baseline "
        "| first step s (compile s) | img/s incl. loading, 0 workers | workers to keep up | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["cases"]:
        head = (f"| {r['label']} | {r['precision']} | {'channels_last' if r['channels_last'] else 'contiguous'} | "
                f"{'compiled' if r['compile'] else 'eager'} | {r['ops']} | {r['threads']} |")
        if r["status"] != "ok":
            msg = (r.get("error") or "").replace("|", "\\|")[:ERROR_CHARS]
            lines.append(f"{head} **{r['status']}**: {msg} | | | | | | | | |")
            continue
        iqr = (f"{r['p25_s']:.3f}-{r['p75_s']:.3f}" if r.get("p25_s") is not None else "-")
        speed = f"{base['median_s'] / r['median_s']:.2f}x" if base else "-"
        first = _f(r["first_step_s"]) + (f" ({r['compile_s']:.1f})" if r.get("compile_s") is not None else "")
        keep = r.get("workers_to_keep_up")
        keep_s = "-" if "workers_to_keep_up" not in r else (f"{keep}" if keep is not None else "**none measured**")
        lines.append(f"{head} {r['median_s']:.3f} | {iqr} | {r['images_per_s']:.1f} | {speed} | {first} | "
                     f"{_f(r.get('images_per_s_with_serial_loading'), '.1f')} | {keep_s} | "
                     f"{_f(r.get('other_load_share'), '.0%')} |")
    lines += [
        "",
        "images/s = 2 x batch / median seconds per step (two frames per pair). A step: inputs to the memory "
        "format, `train_step` (both frames, the loss), the finiteness check, backward and Adam; batches are "
        "rendered before timing. \"recipe\" = bf16 autocast + channels_last + fused ops (the `cpu` config). "
        "Compile s = first step minus a steady one (inductor's on-disk caches can shorten it on later cases "
        "and runs). \"img/s incl. loading, 0 workers\": loading in the main process between steps; "
        "\"workers to keep up\": the fewest DataLoader workers whose pairs/s (below, measured alone) is at "
        "least the pairs/s the step consumes.",
        "",
    ]
    shares = [r for r in result["cases"] if r.get("op_share")]
    if shares:
        lines += [
            "## Share of the step in the mgid ops (fused, eager)",
            "",
            "One extra step per case under `torch.profiler`: the outermost `mgid::` operator calls, forward and "
            "backward, as a share of that step's wall time (profiler overhead included in the wall time).",
            "",
            "| case | profiled step s | memory ops | whitening ops (covariance, BSW mask, loss) | largest ops |",
            "|---|---|---|---|---|",
        ]
        for r in shares:
            sh = r["op_share"]
            top = ", ".join(f"{k.removeprefix('mgid::')} {v * 1e3:.1f} ms" for k, v in list(sh["per_op_s"].items())[:4])
            lines.append(f"| {r['label']} | {sh['profiled_step_s']:.3f} | {sh['memory_share']:.1%} | "
                         f"{sh['whitening_share']:.1%} | {top} |")
        lines.append("")
    lines += [
        "## Data loading",
        "",
        f"`make_dataset(None, \"train\", {s['crop']}, seed, embedded=cfg.embedded)` "
        f"({result['data_set']}) through `DataLoader(batch_size={s['batch']}, num_workers=k)`; "
        f"{s['data_batches']} batches timed after the first.",
        "",
        "| workers | pairs/s | s/batch | first batch s | other load |",
        "|---|---|---|---|---|",
    ]
    for r in result["data_loading"]:
        if r["status"] != "ok":
            lines.append(f"| {r['workers']} | **failed**: {(r['error'] or '')[:ERROR_CHARS]} | | | |")
            continue
        lines.append(f"| {r['workers']} | {r['pairs_per_s']:.1f} | {r['s_per_batch']:.3f} | {r['first_batch_s']:.2f} | "
                     f"{_f(r.get('other_load_share'), '.0%')} |")
    lines += ["", result["data_summary"]["verdict"], ""]
    c = result["curve"]
    lines += ["## Loss curve: fp32 eager vs the fast path", ""]
    if c.get("status") == "skipped":
        lines += [f"Skipped: {c['reason']}.", ""]
    else:
        st = c.get("stats", {})
        lines += [
            f"Both from seed {s['seed']} on the same {c['steps']} batches (rendered once), {c['threads']} thread(s), "
            f"fused ops, learning rate: {c['schedule_note']}. fp32: {c['fp32']['status']} "
            f"({_f(c['fp32'].get('seconds'), '.0f')} s); fast (bf16 + channels_last): {c['fast']['status']} "
            f"({_f(c['fast'].get('seconds'), '.0f')} s).",
            "",
        ]
        for name in ("fp32", "fast"):
            if c[name]["status"] != "ok":
                lines += [f"- {name} run failed: {c[name]['error']}"]
        if st.get("steps_compared"):
            lines += [
                f"| over steps {st['last_half_from_step']}-{st['steps_compared']} | value |",
                "|---|---|",
                f"| mean total loss, fp32 | {st['mean_fp32']:.5f} |",
                f"| mean total loss, fast path | {st['mean_fast']:.5f} |",
                f"| mean abs difference per step | {st['mean_abs_diff']:.5f} ({_f(st['relative_mean_abs_diff'], '.2%')} "
                f"of the fp32 mean) |",
                f"| mean difference (fast - fp32) | {st['mean_diff_fast_minus_fp32']:+.5f} |",
                f"| std of the fp32 curve (batch-to-batch) | {st['std_fp32']:.5f} |",
                f"| abs difference at step 1 (same weights) | {st['first_step_abs_diff']:.5f} |",
                "",
            ]
        lines += [f"Plot: {c.get('plot') or 'not written: ' + str(c.get('plot_note'))}", ""]
    if result["errors"]:
        lines += ["## Errors", ""] + [f"- {e}" for e in result["errors"]] + [""]
    lines += [f"Elapsed: {result['elapsed_s']} s.", ""]
    return "\n".join(lines)


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
        description=__doc__.split("\n\n")[0] + " Times the MGID training step per setting (precision, memory "
                    "format, eager/compiled, fused/reference ops, threads), the data loader per worker count, and "
                    "compares the fp32 and fast-path loss curves.",
        epilog="Exit code: 0 when the report was written and the baseline case ran; 1 when the baseline failed "
               "(the report is still written); 2 on bad options.\nexample: python benchmarks/bench_train.py --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
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
                        "one-factor cases, and the recipe cases run at each (default: 1,2, capped to the usable CPUs)")
    p.add_argument("--workers", type=_int_list, default=[0, 1, 2],
                   help="DataLoader worker counts for the data-loading measurement (default: 0,1,2)")
    p.add_argument("--data-batches", type=int,
                   help="batches timed per worker count, after the first (default: 20; --quick: 2)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the torch.compile cases (default: yes, except with --quick); --no-compile skips them")
    p.add_argument("--cases", default=None,
                   help="comma-separated case ids to run (baseline, bf16, channels_last, reference_ops, threads_T, "
                        "recipe_Tt, compiled, recipe_compiled_Tt); the others are listed as not run "
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
                   help="folder for bench_train_cpu_<UTC timestamp>.json/.md/_curve.png "
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
    t_start = time.perf_counter()
    other_total = OtherLoad()
    env = environment()
    threads_at_start = torch.get_num_threads()
    cfg = named_config(args.config)
    batch = args.batch or cfg.batch_size
    crop = args.crop or cfg.crop_size
    if batch < 1 or crop < 8:
        print("error: --batch must be >= 1 and --crop >= 8", file=sys.stderr)
        return 2
    harness.configure_compile(64)
    errors: list[str] = []

    cases = build_cases(args.threads)
    wanted = None if args.cases is None else {c.strip() for c in args.cases.split(",") if c.strip()}
    if wanted is not None and wanted - {c.id for c in cases}:
        print(f"error: unknown --cases {sorted(wanted - {c.id for c in cases})}; ids here: "
              f"{[c.id for c in cases]}", file=sys.stderr)
        return 2
    log(f"mgid bench_train: {env['cpu']['model']}, torch {env['torch']}, config {args.config}, batch {batch}, "
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
    time_batches = [(to_float_batch(a), to_float_batch(b)) for a, b in rendered[:n_time]]

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
        row = run_case(case, cfg, time_batches, args.warmup, args.steps, args.seed)
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
    out_base = harness.report_base(args.out, "bench_train_cpu")
    if args.curve_steps == 0:
        curve: dict[str, Any] = {"status": "skipped", "reason": "--curve-steps 0"}
    else:
        batches = rendered[:args.curve_steps]
        note = (f"the `{args.config}` schedule's first {args.curve_steps} of {cfg.max_steps or args.curve_steps} steps "
                f"({cfg.optim.schedule}, {cfg.optim.warmup_steps} warm-up steps, peak {cfg.optim.lr:g})"
                if args.curve_schedule == "recipe" else f"constant {cfg.optim.lr:g}")
        log(f"  loss curves: {args.curve_steps} steps each, fp32 then fast path ...")
        fp32 = train_curve(cfg, batches, args.seed, "fp32", False, curve_threads, args.curve_schedule)
        fast = train_curve(cfg, batches, args.seed, "bf16", True, curve_threads, args.curve_schedule)
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
        "device": "cpu",
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
