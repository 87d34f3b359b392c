"""The one place a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``, a `torch.device`) becomes a device.

Used by training (``--device``) and the API (`mgid.load_model`, `mgid.derain.derainer.Derainer`,
`mgid.derain.derainer.load_network`), through which ``mgid derain`` / ``evaluate`` / ``heldout`` load their
models, so a bad or unavailable device gets the same message everywhere.
"""
from __future__ import annotations

import torch

from mgid.errors import MgidError


class DeviceError(MgidError, RuntimeError, ValueError):
    """A device setting is unknown or names hardware torch cannot use; the message says what to pass instead.

    A `RuntimeError` (as torch's own device errors) and a `ValueError` (a bad setting), so callers
    catching either keep working.
    """


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """Turn a device setting into the `torch.device` to run on.

    Args:
        spec: ``"auto"`` (the default) or None: CUDA when torch sees a GPU, else the CPU; otherwise ``"cpu"``,
            ``"cuda"``, ``"cuda:N"`` or a `torch.device` (surrounding spaces and the case of ``"auto"`` do not
            matter).

    Returns:
        The device: of type ``cpu`` or ``cuda``.

    Raises:
        DeviceError: ``spec`` is neither a string nor a `torch.device`, torch does not know it (``"gpu"``), it
            names a device type other than CPU or CUDA, or a CUDA device that is not there (no GPU, or
            ``cuda:N`` beyond the GPUs present); the message says what was asked and what to pass.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(spec, torch.device):
        device = spec
    elif isinstance(spec, str):
        try:
            device = torch.device(spec.strip())
        except (RuntimeError, ValueError) as exc:
            raise DeviceError(f"unknown device {spec!r}: use 'auto' (CUDA when available), 'cpu', 'cuda' or "
                              f"'cuda:N' (--device auto|cpu|cuda)") from exc
    else:
        raise DeviceError(f"a device is a string ('auto', 'cpu', 'cuda', 'cuda:N') or a torch.device, got "
                          f"{type(spec).__name__} {spec!r}")
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"device {str(spec)!r}: mgid runs on the CPU or a CUDA GPU; use 'auto', 'cpu', 'cuda' "
                          f"or 'cuda:N'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(spec)!r} was asked for but torch sees no CUDA GPU; use device='cpu' "
                              f"(--device cpu) or 'auto'")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(spec)!r} was asked for but torch sees {count} CUDA GPU(s) "
                              f"(cuda:0 .. cuda:{count - 1}); pick one of those, or 'cuda' / 'auto'")
    return device


__all__ = ["DeviceError", "resolve_device"]
