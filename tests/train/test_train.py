"""Training loop, checkpoints, resume, validation metrics and the CLI, on tiny data (seconds on a CPU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import mgid.ops
from mgid import checkpoint as ck
from mgid.cli import main as cli_main
from mgid.cli.train import main as train_main
from mgid.config.fields import ConfigError
from mgid.config.train_config import TrainConfig, resolve_config
from mgid.data import EmbeddedDataConfig, write_synthetic_dataset
from mgid.models import MGIDNet, ModelConfig
from mgid.train.sampler import EpochBatchSampler, learning_rate
from mgid.train.stopping import NonFiniteLossError
from mgid.train.trainer import Trainer

# Tiny data: 32-px scenes, one scene of two frames per photo (~20 pairs), two paired test images.
TINY_EMBEDDED = ["--embedded.size", "32", "--embedded.frames_per_scene", "2", "--embedded.train_scenes_per_photo",
                 "1", "--embedded.val_scenes_per_photo", "1", "--embedded.paired_count", "2"]
# A narrow network (16 channels, 4 items) keeps each step in milliseconds; the loop is what is tested.
TINY = TINY_EMBEDDED + ["--model.channels", "16", "--model.memory_items", "4", "--crop_size", "32",
                        "--batch_size", "8", "--device", "cpu", "--log_every", "1", "--image_every", "1",
                        "--checkpoint_every", "1", "--sample_rows", "2"]


def tiny_config(out: Path, **overrides) -> TrainConfig:
    from mgid.cli.train import build_parser
    from mgid.config.fields import overrides_from_args

    args = build_parser().parse_args(TINY + ["--out", str(out)])
    values = overrides_from_args(args)
    values.update(overrides)
    return resolve_config(None, values)


def state_of(out: Path) -> ck.Checkpoint:
    return ck.load_checkpoint(out / "checkpoints", "last")


# --------------------------------------------------------------------------------------------------
# the loop


def test_two_step_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = Trainer(tiny_config(out, max_steps=2), log=lambda s: None).run()
    assert result.step == 2
    assert result.history and all(math.isfinite(h["total"]) for h in result.history)
    for name in ("last.safetensors", "last.optim.safetensors", "last.json"):
        assert (out / "checkpoints" / name).is_file(), name
    meta = json.loads((out / "checkpoints" / "last.json").read_text())
    assert meta["step"] == 2 and meta["config"]["max_steps"] == 2
    assert meta["ops_path"] == mgid.ops.op_path("cpu")
    assert set(meta["rng"]) >= {"python", "numpy", "torch"}
    assert "memory.items" in state_of(out).model_state
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "samples" / "compare.png").is_file()
    v = result.validation
    assert v is not None and v.count == 2 and math.isfinite(v.psnr) and math.isfinite(v.psnr_input)


def test_resume_continues_exactly(tmp_path):
    """3 steps + resume to 5 (mid-epoch: 2 steps per epoch) ends where an uninterrupted 5-step run ends."""
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_main(TINY + ["--out", str(full), "--max-steps", "5"]) == 0
    assert train_main(TINY + ["--out", str(split), "--max-steps", "3"]) == 0
    assert state_of(split).meta["step"] == 3
    assert train_main(TINY + ["--out", str(split), "--max-steps", "5", "--resume"]) == 0
    a, b = state_of(full), state_of(split)
    assert a.meta["step"] == b.meta["step"] == 5
    assert a.model_state.keys() == b.model_state.keys()
    for k in a.model_state:
        torch.testing.assert_close(a.model_state[k], b.model_state[k], rtol=0, atol=1e-6, msg=k)
    assert not torch.equal(a.model_state["memory.items"], MGIDNet(ModelConfig(channels=16, memory_items=4),
                                                                  torch.Generator().manual_seed(0)).memory.items)
    for i, state in a.optimizer_state["state"].items():
        for k, v in state.items():
            torch.testing.assert_close(v, b.optimizer_state["state"][i][k], rtol=0, atol=1e-6)
    assert a.optimizer_state["param_groups"] == b.optimizer_state["param_groups"]


def test_resume_refuses_a_different_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--max-steps", "1"]) == 0
    assert train_main(TINY + ["--out", str(out), "--max-steps", "2", "--resume", "--model.memory_items", "5"]) == 2
    assert "cannot change the model" in capsys.readouterr().err


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--max-steps", "1"]) == 0
    assert train_main(TINY + ["--out", str(out), "--max-steps", "1"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_main(TINY + ["--out", str(out), "--max-steps", "1", "--overwrite"]) == 0
    assert train_main(TINY + ["--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_nan_loss_stops_naming_step_and_term(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = mgid.ops.bsw_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(mgid.ops, "bsw_loss", poisoned)
    trainer = Trainer(tiny_config(out, max_steps=5), log=lambda s: None)
    with pytest.raises(NonFiniteLossError, match=r"step 3: bsw = nan") as info:
        trainer.run()
    assert info.value.step == 3 and "bsw" in info.value.terms
    assert "step 2" in str(info.value)  # points at the last good checkpoint
    assert state_of(out).meta["step"] == 2  # the last good checkpoint is intact


def test_train_on_scene_folders(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(data, config=EmbeddedDataConfig(size=32, frames_per_scene=2, train_scenes_per_photo=1,
                                                            val_scenes_per_photo=1, paired_count=2))
    out = tmp_path / "run"
    rc = train_main(TINY + ["--data", str(data), "--val-data", str(data / "paired"), "--out", str(out),
                            "--max-steps", "2"])
    assert rc == 0
    assert state_of(out).meta["config"]["data"] == str(data)
    assert (out / "samples" / "compare.png").is_file()


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    rc = train_main(TINY + ["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), "--max-steps", "1"])
    assert rc == 2
    assert "not found" in capsys.readouterr().err


def test_sampler_is_seeded_by_epoch_and_skips():
    s = EpochBatchSampler(10, 3, seed=1)
    s.set_epoch(0)
    full = list(s)
    flat = sum(full, [])
    assert len(full) == 3 and len(set(flat)) == 9 and max(flat) < 10  # the partial batch is dropped
    s.set_epoch(0, start=1)
    assert list(s) == full[1:]
    s.set_epoch(1)
    assert list(s) != full
    with pytest.raises(ConfigError, match="batch_size"):
        EpochBatchSampler(2, 3, seed=0)


def test_learning_rate_schedules():
    cfg = resolve_config(None, {"optim": {"schedule": "cosine", "lr": 1e-3, "min_lr": 1e-5}}).optim
    assert learning_rate(0, 100, cfg) == pytest.approx(1e-3)
    assert learning_rate(100, 100, cfg) == pytest.approx(1e-5)
    assert learning_rate(50, 100, resolve_config().optim) == 2e-4
    warm = resolve_config(None, {"optim": {"schedule": "cosine", "lr": 1e-3, "min_lr": 0.0, "warmup_steps": 10}}).optim
    assert [learning_rate(s, 110, warm) for s in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])  # linear warm-up
    assert learning_rate(10, 110, warm) == pytest.approx(1e-3)  # the cosine starts after the warm-up
    assert learning_rate(60, 110, warm) == pytest.approx(5e-4)
    assert learning_rate(110, 110, warm) == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        resolve_config(None, {"optim": {"warmup_steps": -1}})


# --------------------------------------------------------------------------------------------------
# checkpoints


def test_load_model_from_a_training_checkpoint(tmp_path):
    out = tmp_path / "run"
    Trainer(tiny_config(out, max_steps=1), log=lambda s: None).run()
    from mgid.derain.derainer import load_network

    net = load_network(out / "checkpoints" / "last.safetensors")
    assert not net.training and net.config.channels == 16
    assert torch.equal(net.memory.items, state_of(out).model_state["memory.items"])


# --------------------------------------------------------------------------------------------------
# metrics (paper convention)


# --------------------------------------------------------------------------------------------------
# CLI


def test_mgid_data_synth_writes_the_layout(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = cli_main(["data", "synth", "--out", str(out), "--seed", "3", "--size", "16", "--frames_per_scene", "2",
                   "--train_scenes_per_photo", "1", "--val_scenes_per_photo", "1", "--paired_count", "2"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    scenes = [d for d in (out / "train").iterdir() if d.is_dir()]
    assert scenes and all(len(list(d.glob("*.png"))) == 2 for d in scenes)
    assert (out / "val").is_dir()
    assert len(list((out / "paired" / "rain").glob("*.png"))) == 2
    assert len(list((out / "paired" / "norain").glob("*.png"))) == 2
    assert cli_main(["data", "synth", "--out", str(out), "--size", "16"]) == 2  # refuses to overwrite
    assert "already contains" in capsys.readouterr().err


def test_mgid_train_subcommand(tmp_path):
    assert cli_main(["train"] + TINY + ["--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.json").is_file()


def test_auto_on_the_reference_says_why_and_fused_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """Issue 26: where the kernels are missing, ``ops: auto`` trains on the reference with one line saying why and
    how to get them; ``--ops fused`` stops before training with that reason."""
    from mgid.ops import _dispatch

    monkeypatch.setattr(_dispatch, "extension_loaded", lambda: False)
    monkeypatch.setattr(_dispatch, "fused_available", lambda device=None: False)
    monkeypatch.setattr(_dispatch, "EXTENSION_ERROR", "cannot import mgid._C (No module named 'mgid._C')")
    lines: list[str] = []
    trainer = Trainer(tiny_config(tmp_path / "auto", max_steps=1), log=lines.append)
    header = trainer.header()
    assert header.splitlines()[0].endswith("ops: PyTorch reference")
    note = [line for line in header.splitlines() if line.startswith("ops: PyTorch reference because")]
    assert len(note) == 1 and "cannot import mgid._C" in note[0] and "pip install ." in note[0]
    assert train_main(TINY + ["--out", str(tmp_path / "fused"), "--max-steps", "1", "--ops", "fused"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fused mgid ops are unavailable on cpu" in err[0] and "pip install ." in err[0]
    assert not (tmp_path / "fused" / "checkpoints").exists()


# --------------------------------------------------------------------------------------------------
# issue 27 part 4: --out naming a file, frames smaller than the crop


def test_out_naming_a_file_is_a_one_line_error_before_anything_is_written(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    for prog, main, out, extra in (("train.py", train_main, existing, []),
                                   ("mgid train", lambda argv: cli_main(["train", *argv]), existing, []),
                                   ("train.py", train_main, existing / "run", []),
                                   ("train.py", train_main, existing, ["--resume"])):
        assert main(TINY + ["--out", str(out), "--max-steps", "1", *extra]) == 2
        captured = capsys.readouterr()
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in captured.err, captured.err
        assert err[0] == (f"{prog}: error: --out {out}: {existing} is a file, not a folder; pass a folder for the "
                          f"run's outputs (checkpoints/, tb/, samples/; created when missing)")
    assert existing.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_frames_smaller_than_the_crop_are_warned_of_once(tmp_path):
    """20x20 frames under a 32-pixel crop: one warning line in the run's log saying they are padded by mirroring."""
    import numpy as np

    from mgid.data import write_image

    rng = np.random.default_rng(0)
    for scene in ("a", "b"):
        for k in range(2):
            write_image(tmp_path / "data" / scene / f"{k}.png", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    lines: list[str] = []
    Trainer(tiny_config(tmp_path / "run", data=str(tmp_path / "data"), max_steps=1, batch_size=2), log=lines.append)
    warned = [line for line in lines if line.startswith("warning:")]
    assert len(warned) == 1, lines
    assert "4 of the 4 frames" in warned[0] and "smaller than the 32x32 (HxW) crop" in warned[0]
    assert "mirroring" in warned[0] and "lower the crop size to 20 or less" in warned[0]
    lines.clear()
    Trainer(tiny_config(tmp_path / "run2", data=str(tmp_path / "data"), max_steps=1, batch_size=2, crop_size=16),
            log=lines.append)
    assert not [line for line in lines if line.startswith("warning:")]
