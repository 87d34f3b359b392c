"""Which arithmetic runs: ``auto`` precision and memory format, resolved for a device.

One place for training and inference: ``auto`` = bf16 autocast + channels_last on a CPU with native
bf16 instructions (AVX512-BF16 or AMX-BF16), where both measured faster (``benchmarks/bench_train.py``,
``benchmarks/bench_derain.py``), fp32 and the default memory format elsewhere. Imports only torch.
"""
from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16); Linux /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """``auto`` -> ``bf16`` on a CPU with native bf16 instructions, else ``fp32``; other values unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cpu" and cpu_has_native_bf16() else "fp32"


def resolve_channels_last(channels_last: bool | None, precision: str, device: str | torch.device) -> bool:
    """Unset (None) -> channels_last exactly for bf16 on a CPU (where it measured faster); else as given."""
    if channels_last is not None:
        return bool(channels_last)
    return resolve_precision(precision, device) == "bf16" and torch.device(device).type == "cpu"
