"""benchmarks.bench_derain_memory: one child measurement, and the summary, record and before/after table
computed from the committed reports (measuring everything takes minutes; the rows are the measurement)."""
from __future__ import annotations

import json
from pathlib import Path

import benchmarks.bench_derain_memory as bench
from mgid.derain.memory_budget import MEMORY_RECORD

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"



def test_one_measurement_in_a_child(tmp_path):
    from tests.derain.tiny_network import tiny_weights

    w, h = bench.size_of(0.05)
    assert w % 8 == h % 8 == 0 and abs(w * h - 0.05e6) < 0.01e6
    result = bench.measure({"weights": str(tiny_weights(tmp_path)), "channels": 8, "variant": "fp32", "width": w,
                            "height": h, "tile": None, "overlap": 64, "threads": 1})
    assert result["growth_bytes"] > 0 and result["rss_before"] > 0 and result["seconds"] > 0


def test_record_is_the_committed_reports_summary():
    """The package record is `summarise` of the rows of the report it names, so nothing in it is typed in."""
    record = json.loads(MEMORY_RECORD.read_text())
    report_path = RESULTS.parent.parent / record["source"]
    report = json.loads(report_path.read_text())
    fits, variants = bench.summarise(report["rows"], report["settings"]["tile"])
    assert variants == report["variants"] == record["variants"] and fits == report["fits"]
    assert bench.record(report, report_path)["variants"] == record["variants"]
    assert len(bench.record(report, report_path)["inference_code_sha256"]) == 64  # the code it was measured with
    for name, by_width in variants.items():  # the planned cost is the worst measured, above the fitted line
        for width, v in by_width.items():
            assert v["bytes_per_pixel"] >= fits[name][width]["whole_bytes_per_pixel"] * 0.9


def test_before_after_table(tmp_path):
    before = json.loads(next(RESULTS.glob("bench_derain_memory_cpu_*_before.json")).read_text())
    after_path = RESULTS.parent.parent / json.loads(MEMORY_RECORD.read_text())["source"]
    after = json.loads(after_path.read_text())
    text = bench.compare_markdown(before, after, ("before.json", "after.json"))
    assert "| bf16+cl | 64 | whole | 1152x864 | 1.00 |" in text and text.count("\n| ") >= 8
