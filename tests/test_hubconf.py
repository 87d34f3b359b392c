"""hubconf.py: ``torch.hub.load(CLONE, "mgid", source="local")`` gives the network with the shipped weights
(no network needed; TORCH_HOME is a temporary folder)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mgid.checkpoint import load_safetensors
from mgid.derain.derainer import DEFAULT_WEIGHTS
from mgid.models import MGIDNet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # an earlier torch.hub.set_dir would win over TORCH_HOME


def test_hub_load_gives_the_shipped_weights_in_eval_mode():
    net = torch.hub.load(str(REPO), "mgid", source="local")
    assert isinstance(net, MGIDNet) and isinstance(net, torch.nn.Module) and not net.training
    shipped = load_safetensors(DEFAULT_WEIGHTS)
    state = net.state_dict()
    assert state.keys() == shipped.keys()
    for k, v in shipped.items():
        assert torch.equal(state[k], v), k
    image = torch.rand(1, 3, 20, 28) * 2 - 1
    with torch.no_grad():
        out = net(image)
    torch.testing.assert_close(out.background + out.rain, image)


def test_pretrained_false_is_the_same_architecture_randomly_initialised():
    net = torch.hub.load(str(REPO), "mgid", source="local", pretrained=False)
    shipped = load_safetensors(DEFAULT_WEIGHTS)
    state = net.state_dict()
    assert not net.training and {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in shipped.items()}
    assert not torch.equal(state["memory.items"], shipped["memory.items"])
