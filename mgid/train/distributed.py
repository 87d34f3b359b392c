"""Multi-process (DDP) training support: process group, batch sharding helpers, memory and BN sync.

Launch with ``torchrun`` (``env://`` rendezvous). `setup` makes the process group (`DistContext`);
`attach_memory_sync` and `all_reduce_update_stats` keep the memory items identical on every rank;
`GlobalBatchNorm2d`, `convert_sync_batchnorm` and `average_bn_running_stats` handle BatchNorm across ranks.
``batch_size`` is the global batch. The conventions: docs/SCALING.md.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mgid import ops
from mgid.errors import InputError, MgidError
from mgid.ops.reference import NORM_EPS

BACKENDS = ("auto", "nccl", "gloo")


class DistributedSetupError(MgidError, RuntimeError):
    """The environment asks for several processes (``WORLD_SIZE`` > 1) that this torch cannot connect."""


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this module created the process group (and destroys it in `cleanup`)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def cleanup(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> NCCL for CUDA devices, gloo otherwise."""
    if backend not in BACKENDS:
        raise InputError(f"dist.backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise InputError("dist.backend nccl needs CUDA devices; use gloo (or auto) for CPU training")
    return backend


def setup(backend: str, device: torch.device, timeout_s: float = 1800.0) -> DistContext:
    """Join (or create, from torchrun's ``env://`` variables) the default process group.

    A process group that already exists (e.g. created by a test or an outer launcher) is used as
    is. Without one and with ``WORLD_SIZE`` unset or 1, training is single-process.
    """
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                           dist.get_backend(), owns_group=False)
    if env_world_size() <= 1:
        return DistContext()
    if not dist.is_available():
        raise DistributedSetupError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    name = resolve_backend(backend, device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(name, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, name, owns_group=True)


def rank_device(device: torch.device, ctx: DistContext) -> torch.device:
    """Each rank's device: ``cuda:LOCAL_RANK`` for CUDA, the given device otherwise."""
    if device.type == "cuda" and ctx.enabled:
        return torch.device("cuda", ctx.local_rank)
    return device


# --------------------------------------------------------------------------------------------------
# memory items


def all_reduce_update_stats(stats: ops.UpdateStats, items: torch.Tensor,
                            group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """The new items (M, C) from every rank's update statistics (`mgid.ops.UpdateStats`).

    G = all-reduce-max(col_max); sum = all-reduce-sum(weighted_sum * exp(col_max - G)) (0 where
    col_max is -inf: no local query for that item); new items = normalize(P + sum). Since
    exp(S - col_max) * exp(col_max - G) = exp(S - G), this is the single-process update over the
    union of the queries, up to float rounding. Two small all-reduces (M and M*C floats).
    """
    with torch.no_grad():
        col_max, weighted_sum = stats
        global_max = col_max.clone()
        dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
        scale = torch.where(torch.isfinite(col_max), torch.exp(col_max - global_max), torch.zeros_like(col_max))
        total = weighted_sum * scale[:, None]
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return F.normalize(items.detach().to(total.dtype) + total, dim=1, eps=NORM_EPS).to(items.dtype)


# torch.compile: the collectives run eagerly (one graph break per memory update under DDP only).
_distributed_stats_reducer = torch._dynamo.disable(all_reduce_update_stats)


def attach_memory_sync(net: nn.Module, ctx: DistContext) -> None:
    """Make every `MemoryModule` in ``net`` all-reduce its updates across ranks (no-op single-process)."""
    from mgid.models.memory import MemoryModule

    for module in net.modules():
        if isinstance(module, MemoryModule):
            module.stats_reducer = _distributed_stats_reducer if ctx.enabled else None


# --------------------------------------------------------------------------------------------------
# batch norm


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over the batches of all ranks (any backend).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one all-reduces (sum, sum of squares,
    count) per channel with the differentiable ``torch.distributed.nn.functional.all_reduce``, so
    it works with gloo. Same parameters and buffers (state_dict keys) as ``nn.BatchNorm2d``.
    Outside training or without a process group it is plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce as diff_all_reduce

        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() // c, dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        stats = diff_all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm -> synchronised BatchNorm: ``nn.SyncBatchNorm`` on CUDA, `GlobalBatchNorm2d` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return _convert_global(net)


def _convert_global(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        out = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out = out.to(module.weight.device if module.affine else module.running_mean.device)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_global(child))
    return out


@torch.no_grad()
def average_bn_running_stats(net: nn.Module, ctx: DistContext) -> None:
    """Average the BatchNorm running mean/var over ranks (collective: every rank must call it)."""
    if not ctx.enabled:
        return
    bufs = [t for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            for t in (m.running_mean, m.running_var)]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1).float() for b in bufs])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for b in bufs:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean over ranks of a small float vector (identity single-process)."""
    if not ctx.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / ctx.world_size
