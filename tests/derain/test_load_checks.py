"""Weights are checked before a network is built (shapes against the record, finite values), and a network
output that is not finite is an error naming the weights (issue 19)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mgid
import mgid.cli as cli
from mgid.checkpoint import CheckpointError, save_checkpoint
from mgid.data import write_image
from mgid.derain.derainer import Derainer, NonFiniteOutputError, load_network
from mgid.models import MGIDNet
from tests.derain.tiny_network import TINY, tiny_weights
from tests.peak_memory import run_measured


def _nan_weights(folder: Path) -> Path:
    torch.manual_seed(0)
    net = MGIDNet(TINY)
    with torch.no_grad():
        net.decoder.head[2].weight[0, 0, 0, 0] = float("nan")
    # saved through the normal path: the record's hash matches the NaN file
    return save_checkpoint(folder, net, None, {"config": {"model": TINY.to_dict()}}, names=("nan",))["model"]


def test_nan_weights_are_refused_at_load_naming_the_file(tmp_path, capsys):
    path = _nan_weights(tmp_path)
    with pytest.raises(CheckpointError, match=r"decoder\.head\.2\.weight holds NaN or infinite values"):
        load_network(path)
    write_image(tmp_path / "in.png", np.full((16, 16, 3), 128, np.uint8))
    assert cli.main(["derain", str(tmp_path / "in.png"), str(tmp_path / "out"), "--weights", str(path),
                     "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "NaN" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_non_finite_output_is_an_error_naming_the_weights(tmp_path, capsys):
    """Finite weights can still give NaN (an infinite running variance here); the image is not written."""
    path = tiny_weights(tmp_path)
    net = mgid.load_model(path, device="cpu", precision="fp32").net
    with torch.no_grad():
        net.decoder.head[0][1].running_var.fill_(-1.0)  # sqrt of a negative variance: NaN
    derainer = Derainer(net, "cpu", precision="fp32", weights=path)  # the graph is frozen from the broken net
    with pytest.raises(NonFiniteOutputError, match=str(path)):
        derainer.derain(np.full((16, 16, 3), 128, np.uint8))
    with pytest.raises(NonFiniteOutputError, match="a network in memory"):
        Derainer(net, "cpu", precision="fp32").derain(np.full((16, 16, 3), 128, np.uint8))


def test_record_is_checked_against_the_tensors_before_building(tmp_path):
    """A record asking for 4,096 channels and a million memory items next to small tensors is refused in
    milliseconds without allocating the network (measured in a child: its peak RSS grows by < 100 MB, where
    building the network would take about 20 GB)."""
    good = tiny_weights(tmp_path / "good")
    path = tiny_weights(tmp_path)
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["config"]["model"].update(channels=4096, memory_items=10 ** 6)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"has shape .* but the record's network \(channels=4096"):
        load_network(path)
    run = run_measured(f"""
from mgid.derain.derainer import load_network
from mgid.checkpoint import CheckpointError
load_network({str(good)!r})  # the first load imports what loading needs (~160 MB): not the check's cost
mark_baseline()
try:
    load_network({str(path)!r})
except CheckpointError as exc:
    print("REFUSED", exc)
""", limit_bytes=8 << 30)
    assert "REFUSED" in run.stdout, run.stderr[-2000:]
    assert run.growth < 100 << 20, f"loading grew the RSS by {run.growth / 2**20:.0f} MB"
    meta["config"]["model"] = {"channels": 8, "memory_items": 4, "no_such_field": 1}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config.model is not a valid network"):
        load_network(path)
