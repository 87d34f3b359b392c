"""Smoke test of benchmarks.bench_derain: its main() in the --quick setting on one tiny image.

The benchmark ships with the source tree (not the package): ``benchmarks`` imports from the repository root,
where pytest runs. It runs in this process with the shipped weights (one torch thread, a 40x32 image, one
held-out image per set: seconds).
"""
from __future__ import annotations

import json

import pytest

import benchmarks.bench_derain as bench
from mgid.data.heldout_sets import HELDOUT_SETS


def test_quick_run_reports_every_variant(tmp_path, capsys):
    assert bench.main(["--quick", "--sizes", "40x32", "--out", str(tmp_path)]) == 0
    files = sorted(tmp_path.glob("bench_derain_cpu_*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    md = files[0].with_suffix(".md")
    assert md.exists()
    report = json.loads(files[0].read_text())

    assert report["settings"]["quick"] and report["settings"]["threads"] == [1]
    env = report["environment"]
    assert env["torch"] and env["cpu"]["model"] and env["git"]["commit"] and env["loadavg_start"] is not None
    assert env["auto_precision"] in ("fp32", "bf16")

    rows = {(r["variant"], r["tile"]): r for r in report["rows"]}
    untiled = [(v, None) for v in ("fp32", "fp32+cl", "bf16", "bf16+cl")]
    tiled = [("fp32", 32), ("bf16+cl", 32)]  # 40 px wide > one 32 px tile
    assert set(rows) == set(untiled + tiled)
    for key in untiled + tiled:
        r = rows[key]
        assert r["status"] == "ok" and r["size"] == "40x32" and r["threads"] == 1, r
        assert r["best_s"] > 0 and r["mp_per_s"] > 0 and len(r["times_s"]) == 1
        assert r["psnr_vs_clean"] > 0
    assert rows[("fp32", None)]["identical_to_fp32"] and rows[("fp32", None)]["speedup_vs_fp32"] == 1.0
    for v in ("bf16", "bf16+cl"):  # bf16 changes the output a little, not much
        r = rows[(v, None)]
        assert r["identical_to_fp32"] or r["psnr_vs_fp32"] > 35, r

    held = report["heldout"]
    assert set(held["sets"]) == set(HELDOUT_SETS)  # every held-out set the package defines
    for s in held["sets"].values():
        assert set(s) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
        assert s["fp32"]["delta_psnr_vs_fp32"] == 0 and s["fp32"]["count"] == 1
    assert set(held["verdict"]) == {"fp32", "fp32+cl", "bf16", "bf16+cl"} and held["verdict"]["fp32"]["passes"]
    decision = report["decision"]
    assert decision["fastest_passing"] in held["verdict"] and decision["heldout_checked"]

    text = md.read_text()
    assert "| size | threads | variant | tile |" in text and "| 40x32 | 1 | bf16+cl | — |" in text
    assert "| variant | streaks: PSNR (Δ) / SSIM |" in text and "Fastest variant passing" in text
    assert "Fastest variant passing" in capsys.readouterr().out


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "12"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--tile", "32", "--tile-overlap", "32"])
    args = bench.parse_args(["--quick", "--variants", "bf16"])
    assert args.variants == ["fp32", "bf16"]  # the reference always runs
    assert bench.parse_args([]).sizes == [(1707, 1280), (1024, 1024), (512, 512)]
