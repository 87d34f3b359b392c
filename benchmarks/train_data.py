"""Data for the training benchmark: batches rendered once (kept as uint8), the DataLoader throughput
per worker count, and the verdict whether data loading is ever the bottleneck of a step case.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from benchmarks.harness import OtherLoad
from benchmarks.train_cases import short_error


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
