"""`mgid.devices.resolve_device`: the one device resolver of training, the API and the commands."""
from __future__ import annotations

import pytest
import torch

import mgid.derain.derainer as api
from mgid.cli import main as cli_main
from mgid.devices import DeviceError, resolve_device
from mgid.train import trainer


@pytest.fixture()
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_auto_and_explicit_devices(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match=r"'cuda:2'.*sees 2 CUDA GPU\(s\).*cuda:0 \.\. cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", torch.device("cuda")], ids=["name", "index", "torch_device"])
def test_cuda_without_a_gpu_says_what_to_do(no_cuda, spec):
    with pytest.raises(DeviceError, match=r"was asked for but torch sees no CUDA GPU; use device='cpu' "
                                          r"\(--device cpu\) or 'auto'") as info:
        resolve_device(spec)
    assert "cuda" in str(info.value)
    # callers catch RuntimeError (torch's own device errors) or ValueError (a bad setting)
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", ""])
def test_unknown_spec_names_it_and_the_choices(spec):
    with pytest.raises(DeviceError, match=r"unknown device .*use 'auto' \(CUDA when available\), 'cpu', 'cuda'"):
        resolve_device(spec)


def test_devices_mgid_does_not_run_on_and_wrong_types():
    with pytest.raises(DeviceError, match="'meta': mgid runs on the CPU or a CUDA GPU"):
        resolve_device("meta")
    with pytest.raises(DeviceError, match="a device is a string"):
        resolve_device(0)  # type: ignore[arg-type]


def test_one_resolver_everywhere():
    assert api.resolve_device is resolve_device and trainer.resolve_device is resolve_device


def test_commands_report_an_unavailable_device(no_cuda, capsys):
    assert cli_main(["heldout", "--device", "cuda", "--count", "1", "--out", "unused"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
