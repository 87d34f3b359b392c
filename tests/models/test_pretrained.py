"""Weights in the Hugging Face Hub layout (config.json + model.safetensors): save_pretrained / from_pretrained,
load_model and `mgid derain --weights` on such a folder. Offline: nothing is downloaded (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import mgid
import mgid.checkpoint as ck
import mgid.cli as cli
from mgid.checkpoint import CheckpointError
from mgid.data import read_image, write_image
from mgid.models import MGIDNet
from mgid.models.pretrained import from_pretrained, save_pretrained
from tests.derain.tiny_network import TINY, calibrated, smooth_image, tiny_weights

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path, monkeypatch):
    """No network for the Hub client: HF_HUB_OFFLINE=1 (also where huggingface_hub read the variable at import)
    and an empty HF_HOME."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    try:
        import huggingface_hub.constants as hub_constants
    except ModuleNotFoundError:
        return
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


def _tiny_net(seed: int = 0) -> MGIDNet:
    torch.manual_seed(seed)
    return calibrated(MGIDNet(TINY)).eval()


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_round_trip_gives_identical_tensors_and_outputs(tmp_path):
    net = _tiny_net()
    folder = save_pretrained(net, tmp_path / "tiny")
    assert folder == tmp_path / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]  # no temporaries left
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mgid" and config["channels"] == TINY.channels
    assert config["mgid"]["format"] == ck.PRETRAINED_FORMAT and config["mgid"]["provenance"] == {}
    loaded = from_pretrained(folder)
    assert isinstance(loaded, MGIDNet) and not loaded.training and loaded.config == TINY
    _assert_same_state(loaded.state_dict(), net.state_dict())
    image = smooth_image(19, 30)
    with torch.no_grad():
        a, b = net(image), loaded(image)
    assert torch.equal(a.rain, b.rain) and torch.equal(a.background, b.background)
    # the top-level exports are the same functions
    assert mgid.save_pretrained is save_pretrained and mgid.from_pretrained is from_pretrained
    assert {"save_pretrained", "from_pretrained"} <= set(mgid.__all__)


def test_a_derainer_is_saved_with_the_provenance_of_its_weights(tmp_path):
    weights = tiny_weights(tmp_path / "ckpt")
    derainer = mgid.load_model(weights, device="cpu", precision="fp32")
    folder = save_pretrained(derainer, tmp_path / "tiny")
    provenance = json.loads((folder / "config.json").read_text())["mgid"]["provenance"]
    record = ck.read_meta(weights.with_suffix(".json"))
    assert provenance["weights"] == "tiny.safetensors" and provenance["sha256"] == record["sha256"]["model"]
    assert "rng" not in provenance and "optimizer" not in provenance and "model" not in provenance["training_config"]
    again = mgid.load_model(folder, device="cpu", precision="fp32")  # a folder as weights
    assert again.weights == folder / "model.safetensors"
    _assert_same_state(again.net.state_dict(), derainer.net.state_dict())
    rgb = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    assert np.array_equal(again.derain(rgb), derainer.derain(rgb))
    # saving a Derainer of a pretrained folder keeps that folder's provenance
    save_pretrained(again, tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "config.json").read_text())["mgid"]["provenance"] == provenance
    save_pretrained(again, tmp_path / "mine", provenance={"note": "fine-tuned on camera 1"})
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["mgid"]["provenance"] == {
        "note": "fine-tuned on camera 1"}
    with pytest.raises(TypeError, match="MGIDNet or a Derainer"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "bad")


def test_the_shipped_weights_round_trip(tmp_path):
    shipped = mgid.load_model(device="cpu", precision="fp32")
    folder = save_pretrained(shipped, tmp_path / "mgid-embedded")
    provenance = json.loads((folder / "config.json").read_text())["mgid"]["provenance"]
    assert provenance["weights"] == "mgid_embedded.safetensors" and provenance["step"] > 0
    _assert_same_state(from_pretrained(folder).state_dict(),
                       ck.load_safetensors(ck.checkpoint_paths(ck.locate_checkpoint(shipped.weights)[0],
                                                               "mgid_embedded")["model"]))


@pytest.mark.parametrize("present, missing", [("config.json", "model.safetensors"),
                                              ("model.safetensors", "config.json")])
def test_a_folder_missing_a_file_names_it(tmp_path, capsys, present, missing):
    folder = save_pretrained(_tiny_net(), tmp_path / "tiny")
    (folder / missing).unlink()
    for load in (from_pretrained, lambda f: mgid.load_model(f, device="cpu")):
        with pytest.raises(FileNotFoundError, match=f"missing {missing} \\(it has {present}\\)"):
            load(folder)
    write_image(tmp_path / "in.png", np.full((16, 16, 3), 128, np.uint8))
    assert cli.main(["derain", str(tmp_path / "in.png"), str(tmp_path / "out"), "--weights", str(folder),
                     "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"missing {missing}" in err and "Traceback" not in err


def test_files_from_other_saves_or_libraries_are_refused(tmp_path):
    folder = save_pretrained(_tiny_net(0), tmp_path / "a")
    save_pretrained(_tiny_net(1), tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not match config.json \\(SHA-256 differs\\)"):
        from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(CheckpointError, match="not an mgid config"):
        from_pretrained(folder)


def test_a_kill_between_commit_and_move_keeps_the_new_weights(tmp_path, monkeypatch):
    """config.json is the commit point (as a checkpoint's JSON): after it the new weights load from the
    temporary, and the next save moves them into place."""
    folder = save_pretrained(_tiny_net(0), tmp_path / "tiny")
    new = _tiny_net(1)
    real, calls = os.replace, {"n": 0}

    def crash_after_commit(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # config.json moved, model.safetensors not yet
            raise KeyboardInterrupt("simulated kill")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_after_commit)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(new, folder)
    monkeypatch.setattr(ck.os, "replace", real)
    _assert_same_state(from_pretrained(folder).state_dict(), new.state_dict())
    save_pretrained(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    _assert_same_state(from_pretrained(folder).state_dict(), new.state_dict())


def test_a_repo_id_offline_without_cache_is_a_one_line_error(tmp_path):
    pytest.importorskip("huggingface_hub")
    with pytest.raises(CheckpointError) as info:
        from_pretrained("someone/mgid-weights", cache_dir=tmp_path / "hub")
    message = str(info.value)
    assert "\n" not in message and "'someone/mgid-weights' is not a local folder" in message
    assert "Hugging Face Hub" in message and "HF_HUB_OFFLINE" in message
    assert not (tmp_path / "hub").exists() or not any((tmp_path / "hub").rglob("*.safetensors"))


def test_a_repo_id_loads_from_the_hub_cache_offline(tmp_path):
    """The Hub cache layout (refs/main -> snapshots/COMMIT/) filled by hand: snapshot_download resolves it
    without a network."""
    pytest.importorskip("huggingface_hub")
    net = _tiny_net()
    repo = tmp_path / "hub" / "models--someone--mgid-tiny"
    save_pretrained(net, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    loaded = from_pretrained("someone/mgid-tiny", cache_dir=tmp_path / "hub")
    _assert_same_state(loaded.state_dict(), net.state_dict())
    with pytest.raises(ValueError, match="applies to Hub repo ids"):
        from_pretrained(repo / "snapshots" / COMMIT, revision="main")


def test_derain_cli_takes_a_pretrained_folder(tmp_path):
    """`mgid derain --weights FOLDER` de-rains as the checkpoint the folder was saved from."""
    weights = tiny_weights(tmp_path / "ckpt")
    folder = save_pretrained(mgid.load_model(weights, device="cpu"), tmp_path / "tiny")
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    write_image(tmp_path / "in.png", rgb)
    common = ["--device", "cpu", "--precision", "fp32", "--quiet"]
    assert cli.main(["derain", str(tmp_path / "in.png"), str(tmp_path / "a"), "--weights", str(folder), *common]) == 0
    assert cli.main(["derain", str(tmp_path / "in.png"), str(tmp_path / "b"), "--weights", str(weights), *common]) == 0
    out_a, out_b = read_image(tmp_path / "a" / "in.png"), read_image(tmp_path / "b" / "in.png")
    assert out_a.shape == rgb.shape and np.array_equal(out_a, out_b)
