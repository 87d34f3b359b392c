"""The loss-curve check of the training benchmark: fp32 eager vs the fast path (bf16 +
channels_last + fused ops) from the same seed on the same batches, their statistics, and a plot.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import mgid.ops as ops
from benchmarks.train_cases import build_training, short_error
from benchmarks.train_data import to_float_batch
from mgid.config.train_config import TrainConfig
from mgid.train.objective import MGIDObjective, optimizer_step
from mgid.train.sampler import learning_rate


def train_curve(cfg: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]], seed: int, precision: str,
                channels_last: bool, threads: int, schedule: str, device: torch.device | str = "cpu"
                ) -> dict[str, Any]:
    """Total loss per step of a run from ``seed`` on ``batches`` (fused ops, eager, on ``device``): each step
    `MGIDObjective`, the finiteness check, `optimizer_step`, as ``mgid train`` runs it."""
    torch.set_num_threads(threads)
    ops.set_ops_mode("fused")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    losses: list[float] = []
    t0 = time.perf_counter()
    try:
        net, criterion, optimizer = build_training(cfg, seed, channels_last, device)
        objective = MGIDObjective(net, criterion, precision)
        horizon = cfg.max_steps or len(batches)
        for step, (u1, u2) in enumerate(batches):
            # the recipe's schedule at the start of a real run (warm-up), or its peak lr throughout
            lr = learning_rate(step, horizon, cfg.optim) if schedule == "recipe" else cfg.optim.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            frame1 = to_float_batch(u1).to(device).contiguous(memory_format=fmt)
            frame2 = to_float_batch(u2).to(device).contiguous(memory_format=fmt)
            total, _terms, _out = objective(frame1, frame2)
            value = float(total.detach())
            losses.append(value)
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite loss {value} at step {step + 1}")
            optimizer_step(optimizer, total)
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
