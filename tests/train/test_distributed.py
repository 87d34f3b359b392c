"""Data-parallel training (DDP over gloo, two CPU processes): sharding, memory sync, equivalence, resume.

The two ranks are plain subprocesses given torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT on 127.0.0.1): this file is also their entry point (``python tests/train/test_distributed.py
worker OUT WORLD RANK PORT STEPS``).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tiny data and network (as tests/train/test_train.py). Global batch 4 = 2 pairs per rank. BSW weight 0: the
# BSW loss's k-means mask is taken per rank (not a mean over samples), so it is the one term a 2-rank
# step does not share with a 1-process step on the union of the batches (docs/SCALING.md). fp32: the
# equivalence bounds below are for fp32 rounding (bf16, the CPU default, rounds 2^16 times coarser).
TINY = {
    "precision": "fp32",
    "embedded": {"size": 32, "frames_per_scene": 2, "train_scenes_per_photo": 1, "val_scenes_per_photo": 1,
                 "paired_count": 2},
    "model": {"channels": 8, "memory_items": 4},
    "loss": {"bsw": 0.0},
    "crop_size": 16, "batch_size": 4, "device": "cpu", "log_every": 1, "image_every": 0, "val_every": 0,
    "checkpoint_every": 0, "sample_rows": 1, "val_count": 1,
    "dist": {"backend": "gloo", "sync_bn": True},
}


def _config(out: Path, steps: int, **extra):
    from mgid.config.fields import merge
    from mgid.config.train_config import resolve_config

    return resolve_config(None, merge(TINY, {"out": str(out), "max_steps": steps, **extra}))


def _record_items(trainer) -> list[np.ndarray]:
    """Hook the trainer's objective so the memory items after each step's forward (P'') are recorded."""
    seen: list[np.ndarray] = []
    trainer.objective.register_forward_hook(
        lambda module, args, output: seen.append(trainer.net.memory.items.detach().cpu().numpy().copy()))
    return seen


def _run(out: Path, steps: int, resume: bool = False) -> tuple[list[np.ndarray], dict]:
    from mgid.train.trainer import Trainer

    trainer = Trainer(_config(out, steps), resume=resume, log=lambda s: None)
    items = _record_items(trainer)
    trainer.run()
    state = {k: v.detach().cpu().numpy().copy() for k, v in trainer.net.state_dict().items()}
    trainer.close()
    return items, state


def check_memory_all_reduce(rank: int, world: int) -> dict[str, float]:
    """Max |all-reduced update - single update on all queries|, for both max-over modes.

    Rank 1's queries are all copies of one direction, so most items get no query there (col_max
    -inf on that rank with max_over_assigned) -- the case the rescaling must get right.
    """
    import torch.distributed as dist

    from mgid import ops
    from mgid.train.distributed import all_reduce_update_stats

    def all_reduce_memory_update(query, items, max_over_assigned):
        # what `MemoryModule` does under DDP: this rank's update statistics, reduced across ranks
        stats = ops.UpdateStats(*ops.memory_update_stats(query, items, max_over_assigned))
        return all_reduce_update_stats(stats, items)

    g = torch.Generator().manual_seed(7)
    items = torch.nn.functional.normalize(torch.rand(5, 8, generator=g), dim=1)
    queries = [torch.randn(2, 8, 3, 3, generator=g), torch.randn(1, 8, 1, 1, generator=g).expand(2, 8, 3, 3)]
    union = torch.cat(queries)
    errors = {}
    for over_assigned in (False, True):
        got = all_reduce_memory_update(queries[rank].contiguous(), items, over_assigned)
        want = ops.memory_update(union.contiguous(), items, over_assigned)
        errors[str(over_assigned)] = float((got - want).abs().max())
        other = got.clone()
        dist.broadcast(other, 0)
        assert torch.equal(other, got), "ranks disagree"
    return errors


def worker(out: str, world: int, rank: int, steps: int, resume: bool, sync_bn: bool) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    TINY["dist"]["sync_bn"] = sync_bn
    dist.init_process_group("gloo")  # the trainer joins an existing group as it is
    Path(out).mkdir(parents=True, exist_ok=True)
    errors = check_memory_all_reduce(rank, world)
    (Path(out) / f"stats{rank}.json").write_text(json.dumps(errors))
    items, state = _run(Path(out), steps, resume)
    dist.destroy_process_group()
    np.savez(Path(out) / f"rank{rank}.npz", items=np.stack(items), **{f"state/{k}": v for k, v in state.items()})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out: Path, steps: int, world: int = 2, resume: bool = False, sync_bn: bool = True,
           timeout: float = 120) -> None:
    """``world`` worker processes with torchrun's environment variables; asserts they all exit 0."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        cmd = [sys.executable, __file__, "worker", str(out), str(world), str(rank), str(steps), str(int(resume)),
               str(int(sync_bn))]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log[-3000:]}"


# --------------------------------------------------------------------------------------------------
# pieces (one process)


def test_sampler_shards_each_global_batch():
    from mgid.config.fields import ConfigError
    from mgid.train.sampler import EpochBatchSampler

    single = EpochBatchSampler(21, 4, seed=3)
    ranks = [EpochBatchSampler(21, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch, start in ((0, 0), (1, 2)):
        for s in [single, *ranks]:
            s.set_epoch(epoch, start)
        got = [a + b for a, b in zip(*[list(s) for s in ranks])]
        assert got == list(single)  # rank slices, concatenated in rank order = the single-process batches
        assert len(ranks[0]) == len(single) == 5 - start
    with pytest.raises(ConfigError, match="multiple"):
        EpochBatchSampler(21, 3, seed=0, rank=0, world_size=2)


def test_distributed_helpers_are_no_ops_single_process():
    from mgid.models import MGIDNet, ModelConfig
    from mgid.train import distributed as mdist

    ctx = mdist.setup("auto", torch.device("cpu"))
    assert not ctx.enabled and ctx.is_main
    assert mdist.resolve_backend("auto", torch.device("cpu")) == "gloo"
    assert mdist.resolve_backend("auto", torch.device("cuda")) == "nccl"
    with pytest.raises(ValueError, match="CUDA"):
        mdist.resolve_backend("nccl", torch.device("cpu"))
    net = MGIDNet(ModelConfig(channels=8, memory_items=3))
    converted = mdist.convert_sync_batchnorm(net, torch.device("cpu"))
    assert any(isinstance(m, mdist.GlobalBatchNorm2d) for m in converted.modules())
    assert converted.state_dict().keys() == MGIDNet(ModelConfig(channels=8, memory_items=3)).state_dict().keys()
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    a = MGIDNet(ModelConfig(channels=8, memory_items=3), torch.Generator().manual_seed(0))
    b = mdist.convert_sync_batchnorm(MGIDNet(ModelConfig(channels=8, memory_items=3),
                                             torch.Generator().manual_seed(0)), torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x).rain, b(x).rain)  # without a process group: plain BatchNorm


# --------------------------------------------------------------------------------------------------
# two gloo processes


def test_two_ranks_match_one_process_on_the_union(tmp_path):
    """Items identical on both ranks after every step and equal to a 1-process run on the union batch."""
    steps = 3
    launch(tmp_path / "ddp", steps)
    r0, r1 = (np.load(tmp_path / "ddp" / f"rank{r}.npz") for r in range(2))
    assert r0["items"].shape == (steps, 4, 8)
    np.testing.assert_array_equal(r0["items"], r1["items"])  # identical on both ranks, every step
    for key in r0.files:  # weights, BN statistics (sync_bn) and items identical across ranks
        np.testing.assert_allclose(r0[key], r1[key], rtol=0, atol=1e-6, err_msg=key)

    items, state = _run(tmp_path / "single", steps)
    # Step 1 (same weights): the all-reduced update over two ranks' queries = the update over the union.
    np.testing.assert_allclose(items[0], r0["items"][0], rtol=0, atol=1e-5)
    # Later steps: float rounding of the gradients (all-reduced vs one sum) is amplified by Adam, whose
    # first steps move every weight by about lr whatever the gradient's size: bound = 2 lr per step.
    bound = 2 * 2e-4 * steps
    np.testing.assert_allclose(np.stack(items), r0["items"], rtol=0, atol=bound)
    for k, v in state.items():
        np.testing.assert_allclose(r0[f"state/{k}"], v, rtol=1e-3, atol=bound, err_msg=k)

    # rank 0 alone wrote the outputs; the checkpoint equals rank 0's state
    from mgid import checkpoint as ck

    saved = ck.load_checkpoint(tmp_path / "ddp" / "checkpoints")
    assert saved.meta["step"] == steps and saved.meta["world_size"] == 2
    np.testing.assert_array_equal(saved.model_state["memory.items"].numpy(), r0["state/memory.items"])

    import json

    for rank in range(2):  # the memory update alone, both max-over modes, an item with no query on rank 1
        errors = json.loads((tmp_path / "ddp" / f"stats{rank}.json").read_text())
        assert max(errors.values()) < 1e-6, errors

    # resume the 2-process run in one process: the global batches continue where they stopped
    resumed_items, resumed = _run(tmp_path / "ddp", steps + 1, resume=True)
    _, straight = _run(tmp_path / "single4", steps + 1)
    for k, v in straight.items():
        np.testing.assert_allclose(resumed[k], v, rtol=1e-3, atol=2 * 2e-4 * (steps + 1), err_msg=k)


def test_two_ranks_without_sync_bn_stay_identical(tmp_path):
    """Per-rank BN: the forward differs between ranks, but the items are equal after every step and the
    BN running statistics are averaged before the checkpoint."""
    launch(tmp_path / "ddp", 2, sync_bn=False)
    r0, r1 = (np.load(tmp_path / "ddp" / f"rank{r}.npz") for r in range(2))
    np.testing.assert_array_equal(r0["items"], r1["items"])
    for key in r0.files:
        np.testing.assert_allclose(r0[key], r1[key], rtol=0, atol=1e-6, err_msg=key)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "worker":
    out_, world_, rank_, steps_, resume_ = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    sys.path.insert(0, str(ROOT))
    worker(out_, world_, rank_, steps_, resume_ == "1", sys.argv[7] == "1")
