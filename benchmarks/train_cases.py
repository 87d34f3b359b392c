"""The timed settings of the training step (`Case`, `build_cases`) and how one is run and timed.

`run_case` times one training step as ``mgid train`` runs it (`MGIDObjective`, the finiteness check, then
`optimizer_step`) for one `Case` on batches rendered beforehand (`train_data.render_batches`), on the CPU or on
CUDA (the timed region between ``torch.cuda.synchronize()`` calls); `mgid_op_share` profiles one extra CPU step
for the share of its wall time in the compiled mgid ops. Used by `benchmarks.bench_train` (the entry) and
`benchmarks.train_curve`.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
import traceback
from collections.abc import Sequence
from typing import Any

import torch

import mgid.ops as ops
from benchmarks import harness
from benchmarks.harness import OtherLoad, quantile
from mgid.config.train_config import TrainConfig
from mgid.losses import MGIDLoss
from mgid.models import MGIDNet
from mgid.precision import resolve_arithmetic
from mgid.train.objective import MGIDObjective, optimizer_step
from mgid.train.sampler import seed_everything


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


def build_cases(threads: Sequence[int], device: str = "cpu") -> list[Case]:
    """Baseline, one factor at a time, bf16 + channels_last, then ``auto`` (what training resolves on this
    CPU, `mgid.precision.resolve_arithmetic`) eager and compiled at every thread count.

    On CUDA the host's thread count does not matter and ``auto`` is not resolved per CPU: baseline, bf16,
    channels_last, both, the reference ops in fp32 and in bf16 (fused vs reference at both precisions), then
    compiled. The compiled cases come last so that no eager number is taken right after a compilation.
    """
    t0 = threads[0]
    if device == "cuda":
        return [
            Case("baseline", "baseline", threads=t0),
            Case("bf16", "bf16 autocast", precision="bf16", threads=t0),
            Case("channels_last", "channels_last", channels_last=True, threads=t0),
            Case("bf16_channels_last", "bf16 + channels_last", precision="bf16", channels_last=True, threads=t0),
            Case("reference_ops", "reference ops", ops="reference", threads=t0),
            Case("reference_bf16", "reference ops, bf16 autocast", precision="bf16", ops="reference", threads=t0),
            Case("compiled", "torch.compile", compile=True, threads=t0),
        ]
    auto = resolve_arithmetic("auto", None, "cpu")
    cases = [
        Case("baseline", "baseline", threads=t0),
        Case("bf16", "bf16 autocast", precision="bf16", threads=t0),
        Case("channels_last", "channels_last", channels_last=True, threads=t0),
        Case("bf16_channels_last", "bf16 + channels_last", precision="bf16", channels_last=True, threads=t0),
        Case("reference_ops", "reference ops", ops="reference", threads=t0),
    ]
    cases += [Case(f"threads_{t}", f"{t} threads", threads=t) for t in threads[1:]]
    cases += [Case(f"auto_{t}t", f"auto, {t} thread{'s' if t > 1 else ''}", precision=auto.precision,
                   channels_last=auto.channels_last, threads=t) for t in threads]
    cases.append(Case("compiled", "torch.compile", compile=True, threads=t0))
    cases += [Case(f"auto_compiled_{t}t", f"auto compiled, {t} thread{'s' if t > 1 else ''}",
                   precision=auto.precision, channels_last=auto.channels_last, compile=True, threads=t)
              for t in threads]
    return cases


def auto_verdict(cases: Sequence[dict[str, Any]], device: str = "cpu") -> dict[str, Any]:
    """Whether ``auto`` (eager, fused, at its thread count) is the fastest eager combination measured.

    Compares each ``auto_{t}t`` row with every eager row at the same thread count (fp32 vs bf16,
    channels_last or not, fused vs reference ops); compiled rows are reported beside it, since compile
    time (tens of seconds) is not in a steady step. On CUDA (no ``auto_`` case) only the resolution is given.
    """
    auto = resolve_arithmetic("auto", None, device)
    ok = [r for r in cases if r["status"] == "ok"]
    rows = []
    for a in (r for r in ok if r["id"].startswith("auto_") and not r["compile"]):
        peers = [r for r in ok if not r["compile"] and r["threads"] == a["threads"]]
        best = min(peers, key=lambda r: r["median_s"])
        compiled = next((r for r in ok if r["id"] == f"auto_compiled_{a['threads']}t"), None)
        rows.append({"threads": a["threads"], "auto_s": a["median_s"], "fastest_eager": best["label"],
                     "fastest_eager_s": best["median_s"], "auto_within": a["median_s"] / best["median_s"],
                     "compiled_s": compiled["median_s"] if compiled else None})
    return {"resolved": auto.describe(), "precision": auto.precision, "channels_last": auto.channels_last,
            "rows": rows}


def short_error(err: BaseException) -> str:
    """``Type: first line of the message`` (the full message goes to the JSON)."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}"


def build_training(cfg: TrainConfig, seed: int, channels_last: bool, device: torch.device | str = "cpu"
                   ) -> tuple[MGIDNet, MGIDLoss, torch.optim.Optimizer]:
    """A fresh network (weights and memory items fixed by ``seed``) on ``device``, the loss and Adam, as
    `Trainer` builds them."""
    seed_everything(seed)
    net = MGIDNet(cfg.model, generator=torch.Generator().manual_seed(seed))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt).train()
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
             steps: int, seed: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Time ``steps`` training steps of ``case`` after ``warmup`` ones on ``device``; the row of the report.

    A step is what the training loop does per batch: the inputs to the case's memory format,
    `MGIDObjective` (both frames, the loss), the finiteness check (a sync) and `optimizer_step` (backward
    + Adam), as the training loop runs them. ``batches`` are already on ``device``; on CUDA the timed region
    starts and ends with ``torch.cuda.synchronize()``, so a step's time holds all its kernels. Warm-up steps
    are timed too but kept out of the median; for a compiled case the first one holds the compilation.
    """
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    row: dict[str, Any] = {**case.settings(), "device": device.type, "status": "ok", "error": None}
    other = OtherLoad()
    torch.set_num_threads(case.threads)
    row["threads_actual"] = torch.get_num_threads()
    ops.set_ops_mode(case.ops)
    fmt = torch.channels_last if case.channels_last else torch.contiguous_format
    warmup = max(warmup, 1) if case.compile else warmup  # the compilation must not land in a timed step
    try:
        row["op_path"] = ops.op_path(device)  # raises here when "fused" cannot be honoured
        if case.compile:
            torch._dynamo.reset()  # each compiled case compiles its own net from scratch
        net, criterion, optimizer = build_training(cfg, seed, case.channels_last, device)
        model = torch.compile(net) if case.compile else net
        objective = MGIDObjective(model, criterion, case.precision)
        times: list[float] = []
        for i in range(warmup + steps):
            f1, f2 = batches[i % len(batches)]
            sync()
            t0 = time.perf_counter()
            frame1 = f1.contiguous(memory_format=fmt)
            frame2 = f2.contiguous(memory_format=fmt)
            total, _terms, _out1 = objective(frame1, frame2)
            value = float(total.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {i + 1}")
            optimizer_step(optimizer, total)
            sync()
            times.append(time.perf_counter() - t0)
        if case.ops == "fused" and not case.compile and device.type == "cpu":
            def one_step() -> None:
                f1, f2 = batches[0]
                step_total, _t, _o = objective(f1.contiguous(memory_format=fmt), f2.contiguous(memory_format=fmt))
                optimizer_step(optimizer, step_total)
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
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next case starts from the same free memory
    row["other_load_share"] = other.fraction()
    return row
