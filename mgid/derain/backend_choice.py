"""Which runtime ``mgid derain --backend auto`` (the default) runs: PyTorch, or onnxruntime where it measured faster.

`choose_backend` decides from the weights, the device, the precision and the speed record ``backend_speed.json``
beside this module (per CPU kind, `cpu_kind`; the margin `SWITCH_MARGIN`); a PyTorch checkpoint that should run
in onnxruntime is exported once into the user's cache (`cached_onnx_export`). The rules: docs/DEPLOY.md,
"Design notes".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch

from mgid.errors import InputError
from mgid.precision import cpu_info, resolve_precision

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS = get_args(Backend)
#: The measured speeds `choose_backend` decides from.
SPEED_RECORD = Path(__file__).with_name("backend_speed.json")
#: How much faster onnxruntime must have measured for auto to pick it: differences under 5 % are within the
#: run-to-run spread of the same engine on the machines measured (docs/DERAIN.md).
SWITCH_MARGIN = 0.05


@dataclass(frozen=True)
class BackendChoice:
    """backend: ``torch`` or ``onnxruntime``; reason: why, for the command's message."""

    backend: str
    reason: str


def cpu_kind(precision: str) -> str:
    """``"<precision>/<avx512|avx2>"``: the key of this CPU in the speed record (AVX512 as torch may use it)."""
    return f"{precision}/{'avx512' if cpu_info().avx512_usable else 'avx2'}"


def read_speed_record(path: Path = SPEED_RECORD) -> dict:
    """The speed record ({"source": ..., "kinds": {kind: {"torch_s_per_mp", "onnxruntime_s_per_mp"}}}); an empty
    record when the file is missing or unreadable (auto then keeps PyTorch)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"kinds": {}}
    return record if isinstance(record.get("kinds"), dict) else {"kinds": {}}


def choose_backend(backend: str, weights: str | Path | None, device: str | torch.device = "auto",
                   precision: str = "auto", record: dict | None = None) -> BackendChoice:
    """The runtime of ``backend`` (one of `BACKENDS`; ValueError otherwise) for ``weights`` on ``device`` at
    ``precision`` (module doc); ``record``: the speed record (None: `read_speed_record`)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return BackendChoice(backend, "set explicitly")
    if weights is not None and Path(weights).suffix.lower() == ".onnx":
        return BackendChoice("onnxruntime", "the weights are an ONNX file")
    from mgid.devices import resolve_device
    dev = resolve_device(device)
    if dev.type != "cpu":
        return BackendChoice("torch", f"on {dev.type}")
    resolved = resolve_precision(precision, dev, "inference")
    if resolved != "fp32":
        return BackendChoice("torch", f"{resolved}: onnxruntime's CPU provider computes in fp32")
    kind = cpu_kind(resolved)
    speeds = (record if record is not None else read_speed_record())["kinds"].get(kind)
    if not speeds:
        return BackendChoice("torch", f"no speed measured for {kind} CPUs")
    ours, theirs = speeds["torch_s_per_mp"], speeds["onnxruntime_s_per_mp"]
    measured = f"{kind}: PyTorch {ours:.2f} s/MP, onnxruntime {theirs:.2f} s/MP measured"
    return BackendChoice("onnxruntime" if theirs < ours * (1 - SWITCH_MARGIN) else "torch", measured)


def onnx_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/mgid/onnx`` (default ``~/.cache/mgid/onnx``): where `cached_onnx_export` keeps exports."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "mgid" / "onnx"


def cached_onnx_export(weights: str | Path | None) -> Path:
    """The tiling graph (`mgid.derain.onnx_export.export_onnx` with ``tiling_inputs``) of PyTorch ``weights`` (None:
    the shipped ones), exported on first use into `onnx_cache_dir` under the weights' SHA-256 and reused after."""
    from mgid.checkpoint import file_sha256
    from mgid.derain.derainer import resolve_weights
    from mgid.derain.onnx_export import export_onnx

    path = resolve_weights(weights)
    target = onnx_cache_dir() / f"{file_sha256(path)[:16]}_tiling.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(path, target, tiling_inputs=True)  # written atomically
    return target
