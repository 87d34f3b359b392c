"""mgid's fused ops: memory read/update/losses and background selective whitening.

Public functional API (the model and the benchmarks use only this). Each op dispatches to the
compiled kernel for the tensor's device (CUDA kernel, or the C++ CPU kernel that shares its
arithmetic) and to the pure-PyTorch reference where the extension is absent or where
``MGID_OPS=reference`` / `use_reference` asks for it.
"""
from mgid.ops._build import build_info
from mgid.ops._dispatch import fused_available, op_path, ops_mode, set_ops_mode, unavailable_reason, use_reference
from mgid.ops.memory import (
    MemoryStep,
    UpdateStats,
    finish_update,
    memory_losses,
    memory_read,
    memory_step,
    memory_update,
    memory_update_stats,
)
from mgid.ops.whitening import bsw_loss, bsw_mask, feature_covariance

__all__ = [
    "memory_read", "memory_update", "memory_update_stats", "memory_losses", "memory_step", "MemoryStep",
    "UpdateStats", "finish_update",
    "feature_covariance", "bsw_mask", "bsw_loss",
    "build_info", "ops_mode", "set_ops_mode", "use_reference", "fused_available", "op_path",
    "unavailable_reason",
]
