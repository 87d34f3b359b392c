"""Crash safety: SIGKILL at any moment, SIGTERM/SIGINT, non-finite losses, disk full while saving."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mgid.ops
from mgid import checkpoint as ck
from mgid.cli.train import main as train_main
from mgid.train.stopping import EXIT_INTERRUPTED, NonFiniteLossError
from mgid.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--embedded.size", "32", "--embedded.frames_per_scene", "2", "--embedded.train_scenes_per_photo", "1",
        "--embedded.val_scenes_per_photo", "1", "--embedded.paired_count", "2", "--val_count", "1",
        "--model.channels", "8", "--model.memory_items", "4", "--crop_size", "16", "--batch_size", "4",
        "--device", "cpu", "--log_every", "1", "--image_every", "0", "--val_every", "0", "--sample_rows", "1"]


def spawn_training(args: list[str]) -> subprocess.Popen:
    code = "import sys, torch; torch.set_num_threads(1); from mgid.cli.train import main; sys.exit(main(sys.argv[1:]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError("timed out waiting for the training subprocess")
        time.sleep(0.02)


def saved_step(out: Path) -> int:
    try:
        return int(json.loads((out / "checkpoints" / "last.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def assert_same_state(a: ck.Checkpoint, b: ck.Checkpoint) -> None:
    assert a.meta["step"] == b.meta["step"]
    for k in a.model_state:
        torch.testing.assert_close(a.model_state[k], b.model_state[k], rtol=0, atol=1e-6, msg=k)
    for i, state in a.optimizer_state["state"].items():
        for k, v in state.items():
            torch.testing.assert_close(v, b.optimizer_state["state"][i][k], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# SIGKILL


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Killed while saving every step (so likely mid-save), resumed: the same weights as never killed."""
    killed = tmp_path / "killed"
    proc = spawn_training(TINY + ["--out", str(killed), "--max-steps", "1000", "--checkpoint_every", "1"])
    wait_for(lambda: saved_step(killed) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    at_kill = ck.load_checkpoint(killed / "checkpoints")  # the last complete checkpoint is readable
    target = at_kill.meta["step"] + 2
    assert train_main(TINY + ["--out", str(killed), "--max-steps", str(target), "--resume"]) == 0
    straight = tmp_path / "straight"
    assert train_main(TINY + ["--out", str(straight), "--max-steps", str(target), "--checkpoint_every", "0"]) == 0
    assert_same_state(ck.load_checkpoint(killed / "checkpoints"), ck.load_checkpoint(straight / "checkpoints"))
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # the resumed run's saves cleared leftovers


def test_kill_between_commit_and_moves_keeps_the_new_checkpoint(tmp_path, monkeypatch):
    """The JSON is the commit point: a crash after it loads the NEW checkpoint from the temporaries."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    ck.save_checkpoint(tmp_path, net, opt, {"step": 1})
    with torch.no_grad():
        net.weight.add_(1.0)
    real = os.replace
    calls = {"n": 0}

    def crash_after_commit(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # the JSON moved, the first tensor file not yet
            raise KeyboardInterrupt("simulated kill")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_after_commit)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, net, opt, {"step": 2})
    monkeypatch.setattr(ck.os, "replace", real)
    got = ck.load_checkpoint(tmp_path)
    assert got.meta["step"] == 2 and torch.equal(got.model_state["weight"], net.weight)
    assert ck.recover_checkpoint(tmp_path) is True  # the next save (or this) moves them into place
    assert not list(tmp_path.glob(".*.tmp"))
    assert torch.equal(ck.load_safetensors(tmp_path / "last.safetensors")["weight"], net.weight)


# --------------------------------------------------------------------------------------------------
# SIGTERM / SIGINT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_exits(tmp_path, sig):
    out = tmp_path / "run"
    proc = spawn_training(TINY + ["--out", str(out), "--max-steps", "100000", "--checkpoint_every", "0"])
    wait_for(lambda: any((out / "tb").glob("events.*")), proc)  # the loop is about to start
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED[sig] == 128 + sig, err.decode()[-2000:]
    step = saved_step(out)
    assert 0 < step < 100000
    assert signal.Signals(sig).name in err.decode() and "--resume" in err.decode()
    assert train_main(TINY + ["--out", str(out), "--max-steps", str(step + 1), "--resume"]) == 0
    assert saved_step(out) == step + 1


# --------------------------------------------------------------------------------------------------
# non-finite loss


def test_injected_inf_stops_naming_step_and_term(tmp_path, monkeypatch, capsys):
    real = mgid.ops.memory_step  # what the model calls: read, losses and update in one op
    calls = {"n": 0}

    def poisoned(query, items, **kwargs):
        calls["n"] += 1
        step = real(query, items, **kwargs)
        if calls["n"] == 5:  # step 3, frame 1
            step = step._replace(compactness=step.compactness * float("inf"))
        return step

    monkeypatch.setattr(mgid.ops, "memory_step", poisoned)
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--max-steps", "6", "--checkpoint_every", "1"]) == 1
    err = capsys.readouterr().err
    assert "step 3" in err and "compactness" in err and "step 2" in err
    assert saved_step(out) == 2  # the last good checkpoint is intact


def test_nan_raises_with_step_and_terms(tmp_path, monkeypatch):
    real = mgid.ops.bsw_loss
    monkeypatch.setattr(mgid.ops, "bsw_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    from mgid.cli.train import build_parser
    from mgid.config.fields import overrides_from_args
    from mgid.config.train_config import resolve_config

    cfg = resolve_config(None, overrides_from_args(build_parser().parse_args(TINY + ["--out", str(tmp_path)])))
    cfg.max_steps = 3
    with pytest.raises(NonFiniteLossError) as info:
        Trainer(cfg, log=lambda s: None).run()
    assert info.value.step == 1 and "bsw" in info.value.terms


# --------------------------------------------------------------------------------------------------
# disk full


class _FullDisk:
    """A file object that writes half of what it is given, then fails like a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device (simulated)")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert train_main(TINY + ["--out", str(out), "--max-steps", "2", "--checkpoint_every", "1"]) == 0
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    real_fdopen = os.fdopen
    monkeypatch.setattr(ck.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    code = train_main(TINY + ["--out", str(out), "--max-steps", "4", "--checkpoint_every", "1", "--resume"])
    err = capsys.readouterr().err  # an OSError is one line and exit code 2, as every command's (mgid.cli.common)
    assert code == 2 and f"train.py: error: [Errno {errno.ENOSPC}] No space left on device" in err
    monkeypatch.setattr(ck.os, "fdopen", real_fdopen)
    after = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    assert after == before  # same files, same bytes, no half-written temporaries
    assert ck.load_checkpoint(out / "checkpoints").meta["step"] == 2
    assert train_main(TINY + ["--out", str(out), "--max-steps", "4", "--resume"]) == 0
    assert saved_step(out) == 4
