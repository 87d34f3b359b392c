"""`mgid.derain.backend_choice`: what ``--backend auto`` runs, and the cached ONNX export it uses."""
from __future__ import annotations

import numpy as np
import pytest

import mgid.derain.backend_choice as choice
from mgid import cli
from mgid.data.imageio import read_image, write_image
from mgid.derain.backend_choice import choose_backend, cpu_kind
from tests.derain.tiny_network import tiny_weights


def _record(torch_s: float, onnx_s: float) -> dict:
    return {"source": "test", "kinds": {cpu_kind("fp32"): {"torch_s_per_mp": torch_s, "onnxruntime_s_per_mp": onnx_s}}}


def test_auto_follows_the_weights_device_precision_and_record(tmp_path):
    assert choose_backend("torch", "x.onnx").backend == "torch"  # explicit: as given
    assert choose_backend("onnxruntime", None).backend == "onnxruntime"
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend("tensorrt", None)
    assert choose_backend("auto", tmp_path / "model.ONNX").backend == "onnxruntime"
    bf16 = choose_backend("auto", None, "cpu", "bf16", record=_record(9.0, 1.0))
    assert bf16.backend == "torch" and "computes in fp32" in bf16.reason
    faster = choose_backend("auto", None, "cpu", "fp32", record=_record(2.0, 1.5))
    assert faster.backend == "onnxruntime" and "1.50 s/MP" in faster.reason and cpu_kind("fp32") in faster.reason
    assert choose_backend("auto", None, "cpu", "fp32", record=_record(1.5, 2.0)).backend == "torch"
    assert choose_backend("auto", None, "cpu", "fp32", record=_record(2.0, 1.95)).backend == "torch"  # a tie
    unmeasured = choose_backend("auto", None, "cpu", "fp32", record={"kinds": {}})
    assert unmeasured.backend == "torch" and "no speed measured" in unmeasured.reason


def test_speed_record_reads_and_tolerates_a_missing_file(tmp_path):
    assert choice.read_speed_record(tmp_path / "missing.json") == {"kinds": {}}
    (tmp_path / "junk.json").write_text("{not json")
    assert choice.read_speed_record(tmp_path / "junk.json") == {"kinds": {}}
    shipped = choice.read_speed_record()
    assert shipped["kinds"], "the package ships the record bench_derain --write-record wrote"
    for kind, speeds in shipped["kinds"].items():
        assert kind.split("/")[0] == "fp32" and speeds["torch_s_per_mp"] > 0 and speeds["onnxruntime_s_per_mp"] > 0


def test_auto_runs_onnxruntime_where_it_measured_faster(tmp_path, monkeypatch, capsys):
    """The CLI with PyTorch weights: exports the tiling graph once into the cache and de-rains with it."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(choice, "read_speed_record", lambda path=None: _record(2.0, 1.0))
    weights = tiny_weights(tmp_path / "w")
    write_image(tmp_path / "in" / "a.png", np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    args = ["derain", str(tmp_path / "in"), str(tmp_path / "out"), "--weights", str(weights), "--precision", "fp32",
            "--quiet"]
    assert cli.main(args) == 0
    assert "backend onnxruntime (auto: " in capsys.readouterr().err
    (export,) = (tmp_path / "cache" / "mgid" / "onnx").glob("*_tiling.onnx")
    stamp = export.stat().st_mtime_ns
    assert read_image(tmp_path / "out" / "a.png").shape == (40, 48, 3)
    assert cli.main(args[:2] + [str(tmp_path / "out2")] + args[3:]) == 0
    assert export.stat().st_mtime_ns == stamp  # reused, not exported again
    monkeypatch.setattr(choice, "read_speed_record", lambda path=None: _record(1.0, 2.0))
    assert cli.main(args[:2] + [str(tmp_path / "out3")] + args[3:]) == 0
    assert "backend torch (auto: " in capsys.readouterr().err
