"""Which implementation an op runs: the compiled kernels ("fused") or the PyTorch reference.

``MGID_OPS`` = ``auto`` (default: fused where the extension is built), ``fused`` (fail if it is
not) or ``reference``. `use_reference` forces the reference inside a ``with`` block.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal, get_args

import torch

from mgid.errors import InputError, MgidError
from mgid.ops._build import BUILD_HINT, EXTENSION_ERROR, extension_loaded

OpsMode = Literal["auto", "fused", "reference"]
MODES = get_args(OpsMode)
_mode_override: str | None = None


class FusedOpsUnavailableError(MgidError, RuntimeError):
    """Ops mode ``fused`` was asked for where the fused kernels cannot run (not built, or not for this device)."""


def ops_mode() -> str:
    """The mode in force: the override of `set_ops_mode`/`use_reference`, else ``MGID_OPS``."""
    mode = _mode_override or os.environ.get("MGID_OPS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise InputError(f"MGID_OPS must be one of {MODES}, got {mode!r}")
    return mode


def set_ops_mode(mode: str | None) -> None:
    """Set the mode for this process (``None`` returns to ``MGID_OPS``)."""
    global _mode_override
    if mode is not None and mode not in MODES:
        raise InputError(f"ops mode must be one of {MODES}, got {mode!r}")
    _mode_override = mode


@contextlib.contextmanager
def use_reference(enabled: bool = True) -> Iterator[None]:
    """Run every mgid op on the PyTorch reference inside the block."""
    global _mode_override
    saved = _mode_override
    _mode_override = "reference" if enabled else saved
    try:
        yield
    finally:
        _mode_override = saved


def fused_available(device: torch.device | str | None = None) -> bool:
    """True when the compiled kernels exist for ``device`` (CPU always, CUDA when built with CUDA)."""
    if not extension_loaded():
        return False
    if device is None or torch.device(device).type == "cpu":
        return True
    if torch.device(device).type == "cuda":
        return bool(torch.ops.mgid.built_with_cuda())
    return False


def unavailable_reason(device: torch.device | str | None = None) -> str | None:
    """Why the compiled kernels cannot run on ``device``, with how to get them; ``None`` when they can."""
    if fused_available(device):
        return None
    if not extension_loaded():
        return f"{EXTENSION_ERROR}; {BUILD_HINT}"
    kind = torch.device(device).type
    if kind == "cuda":
        return ("the extension was built without CUDA kernels (no nvcc at build time, or MGID_FORCE_CPU=1); install "
                "the CUDA toolkit and run `pip install .` again (MGID_FORCE_CUDA=1 makes a missing nvcc an error)")
    return f"mgid has no kernels for {kind} devices"


def use_fused(device: torch.device) -> bool:
    """Whether an op on a tensor of ``device`` should run the compiled kernel.

    Raises:
        RuntimeError: the mode is ``fused`` and the kernels cannot run on ``device``.
    """
    mode = ops_mode()
    if mode == "reference":
        return False
    reason = unavailable_reason(device)
    if mode == "fused" and reason is not None:
        raise FusedOpsUnavailableError(f"ops mode 'fused' but the fused mgid ops are unavailable on {device}: {reason} "
                           "(or use ops mode 'auto' for the PyTorch reference)")
    return reason is None


def op_path(device: torch.device | str = "cpu") -> str:
    """Human-readable name of the path ops on ``device`` take, e.g. ``"fused CUDA kernels"``."""
    device = torch.device(device)
    if not use_fused(device):
        return "PyTorch reference"
    return "fused CUDA kernels" if device.type == "cuda" else "fused C++ CPU kernels"
