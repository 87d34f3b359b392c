"""Smoke test of benchmarks.bench_derain: its main() in the --quick setting on one tiny image with a tiny network.

The benchmark ships with the source tree (not the package): ``benchmarks`` imports from the repository root,
where pytest runs. It runs in this process (one torch thread, a 64x48 image and a two-frame 64x48 clip): seconds.
"""
from __future__ import annotations

import json

import pytest

import benchmarks.bench_derain as bench
from benchmarks import cpu_peak
from mgid.derain import backend_choice as choice
from mgid.precision import cpu_info
from tests.derain.tiny_network import tiny_weights


def test_quick_run_reports_every_engine(tmp_path, capsys):
    weights = tiny_weights(tmp_path / "w")
    record_path = tmp_path / "speed.json"
    assert bench.main(["--quick", "--weights", str(weights), "--out", str(tmp_path), "--write-record",
                       str(record_path)]) == 0
    files = sorted(tmp_path.glob("bench_derain_cpu_*.json"))
    assert len(files) == 1, list(tmp_path.iterdir())
    report = json.loads(files[0].read_text())
    assert report["quick"] and report["threads"] == 1
    (setting,) = report["settings"]
    assert setting["setting"] == "native" and setting["environment"]["cpu"]["model"]
    precisions = ["bf16", "fp32"] if cpu_info().native_bf16 else ["fp32"]
    assert setting["precisions"] == precisions
    for p in precisions:
        peak = setting["peaks"][p]
        assert peak["gemm_gflops"] > 0 and "FLOP/cycle" in peak["formula"] or peak["gflops"] is None
    rows = {(r["engine"], r["precision"]): r for r in setting["rows"]}
    expected = {(e, p) for e in ("before", "mgid") for p in precisions} | {("onnxruntime", "fp32")}
    assert set(rows) == expected
    for r in rows.values():
        assert r["size"] == "64x48" and r["best_s"] > 0 and r["mp_per_s"] > 0 and r["gflop"] > 0
        assert r["gflops"] == pytest.approx(r["gflop"] / r["best_s"], rel=0.05)  # both rounded
    assert rows[("before", "fp32")]["psnr_vs_reference"] is None  # the reference itself: identical
    assert rows[("mgid", "fp32")]["max_abs_diff_vs_reference"] <= 1  # the frozen graph: rounding only
    assert rows[("onnxruntime", "fp32")]["max_abs_diff_vs_reference"] <= 1
    video = {(v["engine"], v["size"]) for v in setting["video"]}
    assert {e for e, _ in video} >= {f"mgid {precisions[0]}", "onnxruntime fp32"}
    assert all(v["fps"] > 0 and v["frames"] == 2 for v in setting["video"])
    assert set(setting["profiles"]) == {f"64x48 mgid {p}" for p in precisions}
    assert any("convolution" in r["op"] for r in setting["profiles"]["64x48 mgid fp32"])
    assert any("mgid fp32" in t and "before fp32" in t for t in report["targets"])
    record = json.loads(record_path.read_text())
    (kind,) = record["kinds"]  # the native setting's fp32 speeds, the key --backend auto looks up here
    assert kind == choice.cpu_kind("fp32") and record["source"].endswith(".json")
    assert record["kinds"][kind]["torch_s_per_mp"] == rows[("mgid", "fp32")]["s_per_mp"]
    assert record["kinds"][kind]["onnxruntime_s_per_mp"] == rows[("onnxruntime", "fp32")]["s_per_mp"]
    text = files[0].with_suffix(".md").read_text()
    assert "| size | engine | precision | s/image (best) |" in text and "## Targets" in text
    assert "Profile of 64x48 mgid fp32" in text and "## Targets" in capsys.readouterr().out


def test_peak_formula_follows_the_flags():
    peak = cpu_peak.theoretical_peak("fp32", 2)
    if peak["gflops"] is not None:
        per_cycle = cpu_peak.FLOP_PER_CYCLE[("fp32", peak["isa"])]
        assert peak["gflops"] == pytest.approx(2 * peak["clock_ghz"] * per_cycle, abs=0.1)
        assert f"{per_cycle} FLOP/cycle" in peak["formula"]


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        bench.parse_args(["--sizes", "12"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--repeats", "0"])
    args = bench.parse_args([])
    assert args.sizes == [(1024, 1024)] and args.video_sizes == [(1280, 720), (1920, 1080)]
    assert args.settings == (["native", "avx2"] if "avx512f" in cpu_info().flags else ["native"])
