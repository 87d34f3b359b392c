"""Checkpoints (`mgid.checkpoint`): the round trip with the optimiser, atomic writes, refusing pickles
and truncated files, the RNG states."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mgid import checkpoint as ck
from mgid.models import MGIDNet, ModelConfig


def _tiny_net(seed: int = 0) -> MGIDNet:
    torch.manual_seed(seed)
    return MGIDNet(ModelConfig(channels=8, memory_items=3), torch.Generator().manual_seed(seed))


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    net = _tiny_net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    net(x).background.mean().backward()
    opt.step()
    ck.save_checkpoint(tmp_path, net, opt, {"step": 1}, names=("last", "step_000001"))
    got = ck.load_checkpoint(tmp_path, "step_000001")
    for k, v in net.state_dict().items():
        assert torch.equal(got.model_state[k], v), k
    opt2 = torch.optim.Adam(_tiny_net(1).parameters(), lr=1e-3)
    opt2.load_state_dict(got.optimizer_state)
    assert opt2.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v), k


@pytest.mark.parametrize("failure", ["replace", "write"])
def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    net = _tiny_net()
    opt = torch.optim.Adam(net.parameters())
    ck.save_checkpoint(tmp_path, net, opt, {"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    if failure == "replace":
        monkeypatch.setattr(ck.os, "replace", boom)
    else:
        real = ck._write_temp
        calls = {"n": 0}

        def fail_second(path, data):  # the model file is written, the optimiser file fails
            calls["n"] += 1
            if calls["n"] == 2:
                boom()
            return real(path, data)

        monkeypatch.setattr(ck, "_write_temp", fail_second)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(tmp_path, net, opt, {"step": 2})
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files, same bytes, no temporaries left behind
    assert ck.load_checkpoint(tmp_path).meta["step"] == 1


def test_loading_refuses_pickles_and_truncated_files(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    net = _tiny_net()
    pt = tmp_path / "model.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(ck.CheckpointError, match="only .safetensors"):
        ck.load_safetensors(pt)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(pt.read_bytes())
    with pytest.raises(ck.CheckpointError, match="pickled"):
        ck.load_safetensors(disguised)

    ck.save_checkpoint(tmp_path / "ok", net, None, {"step": 0})
    good = tmp_path / "ok" / "last.safetensors"
    data = good.read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated"):
        ck.load_safetensors(truncated)
    (tmp_path / "tiny.safetensors").write_bytes(b"abc")
    with pytest.raises(ck.CheckpointError, match="truncated|not a safetensors"):
        ck.load_safetensors(tmp_path / "tiny.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((20).to_bytes(8, "little") + b"{not json at all!!!}" + b"0" * 10)
    with pytest.raises(ck.CheckpointError, match="not JSON"):
        ck.load_safetensors(garbage)

    # a tensor file from another save than its JSON is detected by the hash
    other = _tiny_net(1)
    good.write_bytes(ck.save_safetensors_bytes(other.state_dict()))
    with pytest.raises(ck.CheckpointError, match="SHA-256"):
        ck.load_checkpoint(tmp_path / "ok")
    (tmp_path / "ok" / "last.json").write_text("{")
    with pytest.raises(ck.CheckpointError, match="not valid JSON"):
        ck.load_checkpoint(tmp_path / "ok")


def test_rng_state_round_trip():
    import random

    state = json.loads(json.dumps(ck.rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ck.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
