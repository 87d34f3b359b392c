"""Smoke test of benchmarks.bench_ops: a --quick run on the CPU writes a JSON with timed rows.

One torch thread: on a small machine that is busy with other work, OpenMP threads that wait for
each other make a --quick run many times slower.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import benchmarks.public_loop as loop
from mgid.data.heldout_sets import HELDOUT_SETS

REPO = Path(__file__).resolve().parents[2]


def test_bench_ops_quick_writes_rows(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_ops", "--quick", "--device", "cpu",
         "--shapes", "train", "--threads", "1", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(tmp_path.glob("bench_ops_cpu_*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    assert files[0].with_suffix(".md").exists()
    result = json.loads(files[0].read_text())

    assert result["device"] == "cpu"
    assert result["cuda_measured"] is False and result["cuda_not_measured_reason"]
    assert "CUDA rows were not measured" in result["markdown"]
    assert result["fused_path"] and "fused column ran" in result["markdown"]
    assert result["environment"]["torch"] and "build_info" in result["environment"]

    ops = {(c["op"], c["pass"]) for c in result["cases"]}
    for op in [("memory step", "fwd"), ("memory step", "fwd+bwd"), ("read", "fwd"), ("read", "fwd+bwd"),
               ("update", "fwd"), ("losses", "fwd"), ("losses", "fwd+bwd")]:
        assert op in ops, op
    assert any(op.startswith("cov+BSW") for op, _ in ops)
    timed = [(c["op"], c["pass"], r["impl"]) for c in result["cases"] for r in c["rows"] if r["status"] == "ok"]
    for impl in ("fused", "reference", "loop"):
        assert ("memory step", "fwd+bwd", impl) in timed, impl
    for c in result["cases"]:
        for r in c["rows"]:
            if r["status"] == "ok":
                assert r["median_s"] > 0 and r["samples"] >= 1
    assert not result["errors"], result["errors"]

    # The per-item loop transcription agrees with the reference (one call, before timing).
    memory = next(chk for chk in result["checks"] if chk["what"] == "memory")
    assert isinstance(memory["loop_vs_reference"], dict), memory
    assert max(memory["loop_vs_reference"].values()) < 1e-4, memory


def test_public_loop_baseline_matches_reference() -> None:
    """benchmarks.public_loop, the per-item loop of the public code that bench_ops times as its
    baseline: it agrees with mgid.ops.reference, output
    by output and in the gradient of the read and the losses (float64, a small odd shape)."""
    from mgid.ops import reference

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 3, 5, generator=gen, dtype=torch.float64)
    items = F.normalize(torch.rand(6, 8, generator=gen, dtype=torch.float64), dim=1)
    got = loop.memory_step(q, items)
    want = (reference.memory_read(q, items), reference.memory_update(q, items), *reference.memory_losses(q, items))
    for name, a, b in zip(("read", "update", "compactness", "separateness"), got, want):
        assert torch.allclose(a, b, atol=1e-10), name
    grads = []
    for fn in (lambda x: loop.memory_read(x, items).sum() + sum(loop.memory_losses(x, items)),
               lambda x: reference.memory_read(x, items).sum() + sum(reference.memory_losses(x, items))):
        leaf = q.clone().requires_grad_(True)
        fn(leaf).backward()
        grads.append(leaf.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-10)


def test_bench_train_quick_writes_baseline(tmp_path: Path) -> None:
    """benchmarks.bench_train --quick (one thread, as above): exit 0, a JSON whose baseline case ran
    (images/s > 0) and a markdown report with the step table."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_train", "--quick", "--threads", "1",
         "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(tmp_path.glob("bench_train_cpu_*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    result = json.loads(files[0].read_text())
    cases = {c["id"]: c for c in result["cases"]}
    assert cases["baseline"]["status"] == "ok", cases["baseline"]
    assert cases["baseline"]["images_per_s"] > 0
    assert all(c["status"] == "skipped" for c in result["cases"] if c["compile"])  # --quick: no compile
    assert result["data_loading"] and result["curve"]["status"] == "ok", result["curve"]
    md = files[0].with_suffix(".md")
    assert md.exists()
    text = md.read_text()
    assert "| case | precision |" in text and "| baseline |" in text


def test_learning_curve_scores_step_checkpoints_and_plots(tmp_path: Path) -> None:
    """tools.learning_curve on a 2-step tiny run with step checkpoints: a cached score per step for
    every held-out set, a rerun that scores nothing new, and the PNG."""
    from mgid.config.train_config import resolve_config
    from mgid.train.trainer import Trainer

    cfg = resolve_config("quick", {
        "out": str(tmp_path / "run"), "max_steps": 2, "checkpoint_every": 1, "keep_step_checkpoints": True,
        "model": {"channels": 8, "memory_items": 4}, "crop_size": 16, "batch_size": 2, "val_every": 0,
        "image_every": 0, "val_count": 1, "sample_rows": 1, "device": "cpu"})
    Trainer(cfg, log=lambda s: None).run()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "tools.learning_curve", "--run", str(tmp_path / "run"),
           "--count", "1", "--plot", str(tmp_path / "curve.png")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads((tmp_path / "run" / "learning_curve.json").read_text())
    assert sorted(data["steps"]) == ["1", "2"] and set(data["steps"]["2"]) == set(data["rainy"])
    assert (tmp_path / "curve.png").stat().st_size > 0
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0 and "step 1:" not in again.stdout  # cached: nothing scored twice
    # a second stage drawn after the run it started from (here: the same curve twice)
    staged = subprocess.run([*cmd[:-1], str(tmp_path / "staged.png"), "--previous",
                             str(tmp_path / "run" / "learning_curve.json")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert staged.returncode == 0, staged.stderr[-4000:]
    assert (tmp_path / "staged.png").stat().st_size > (tmp_path / "curve.png").stat().st_size // 2


def test_recalibrated_score_rescores_checkpoints(tmp_path: Path) -> None:
    """benchmarks.recalibrated_score: a step checkpoint re-scored after BatchNorm recalibration, every set."""
    from mgid.config.train_config import resolve_config
    from mgid.train.trainer import Trainer

    cfg = resolve_config("quick", {
        "out": str(tmp_path / "run"), "max_steps": 1, "checkpoint_every": 1, "keep_step_checkpoints": True,
        "model": {"channels": 8, "memory_items": 4}, "crop_size": 16, "batch_size": 2, "val_every": 0,
        "image_every": 0, "val_count": 1, "sample_rows": 1, "device": "cpu", "bn_recalibration_batches": 0})
    Trainer(cfg, log=lambda s: None).run()
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001.safetensors"
    cmd = [sys.executable, "-m", "benchmarks.recalibrated_score", str(ckpt), "--batches", "2",
           "--json", str(tmp_path / "scores.json")]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    scores = json.loads((tmp_path / "scores.json").read_text())["scores"][str(ckpt)]
    assert set(scores) == set(HELDOUT_SETS) and all(math.isfinite(v["gain"]) for v in scores.values())
