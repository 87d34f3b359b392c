"""BatchNorm recalibration: plain averages of the batch statistics, nothing else touched; trainer hook."""
from __future__ import annotations

import torch

from mgid.checkpoint import load_checkpoint
from mgid.config.fields import merge
from mgid.config.train_config import resolve_config
from mgid.models import MGIDNet, ModelConfig
from mgid.train.bn_recalibration import batchnorm_layers, recalibrate_batchnorm
from mgid.train.trainer import Trainer

TINY = {
    "model": {"channels": 8, "memory_items": 4}, "crop_size": 16, "batch_size": 2, "device": "cpu",
    "log_every": 1, "image_every": 0, "val_every": 0, "checkpoint_every": 0, "sample_rows": 1, "val_count": 1,
    "precision": "fp32",
}


def test_running_statistics_become_the_mean_of_the_batch_statistics():
    torch.manual_seed(0)
    net = MGIDNet(ModelConfig(channels=8, memory_items=4), torch.Generator().manual_seed(0)).eval()
    first = batchnorm_layers(net)[0]
    seen = []
    hook = first.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    batches = [torch.rand(2, 3, 16, 16) * 2 - 1 for _ in range(3)]
    items = net.memory.items.clone()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "tracked" not in k}
    momentum = first.momentum
    assert recalibrate_batchnorm(net, batches) == 3
    hook.remove()
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-5, atol=1e-6)
    assert not net.training and first.momentum == momentum  # mode and momentum restored
    torch.testing.assert_close(net.memory.items, items, rtol=0, atol=0)  # the memory is only read
    for k, v in net.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k
    before = first.running_mean.clone()
    assert recalibrate_batchnorm(net, []) == 0  # no batches: the statistics stay as they were
    assert torch.equal(first.running_mean, before)


def test_trainer_recalibrates_once_at_the_end(tmp_path):
    out = tmp_path / "run"
    logs: list[str] = []
    cfg = resolve_config(None, merge(TINY, {"out": str(out), "max_steps": 2, "bn_recalibration_batches": 2}))
    Trainer(cfg, log=logs.append).run()
    assert sum("BatchNorm statistics re-estimated" in line for line in logs) == 1
    ckpt = load_checkpoint(out / "checkpoints")
    assert ckpt.meta["bn_recalibrated"] == [2, 2]
    plain = tmp_path / "plain"
    Trainer(resolve_config(None, merge(TINY, {"out": str(plain), "max_steps": 2})), log=lambda s: None).run()
    key = next(k for k in ckpt.model_state if k.endswith("running_mean"))
    assert not torch.equal(ckpt.model_state[key], load_checkpoint(plain / "checkpoints").model_state[key])
    assert load_checkpoint(plain / "checkpoints").meta["bn_recalibrated"] is None
    # resuming a finished, recalibrated run does not do it again; training further does
    logs.clear()
    Trainer(cfg, resume=True, log=logs.append).run()
    assert not any("re-estimated" in line for line in logs)
    more = resolve_config(None, merge(TINY, {"out": str(out), "max_steps": 3, "bn_recalibration_batches": 2}))
    Trainer(more, resume=True, log=logs.append).run()
    assert any("re-estimated" in line for line in logs)
    assert load_checkpoint(out / "checkpoints").meta["bn_recalibrated"] == [3, 2]
