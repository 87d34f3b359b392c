"""Loads the compiled extension ``mgid._C`` if it was built, and says how it was built."""
from __future__ import annotations

import torch

try:
    from mgid import _C  # noqa: F401  (registers the torch.ops.mgid.* kernels)
    EXTENSION_ERROR: str | None = None
except ImportError as err:  # pure-Python install, or a build for another torch
    _C = None
    EXTENSION_ERROR = str(err)


def extension_loaded() -> bool:
    return _C is not None


def build_info() -> dict:
    """How the extension was built: ``{"extension": bool, "cuda": bool, "torch": str, "cuda_arch_list": str|None, ...}``.

    ``cuda`` is True when the CUDA kernels were compiled in; ``torch`` is the torch version it was
    built against; ``cpu_isa`` the copy of the CPU memory kernels that runs here (``avx2`` where the
    CPU has it, else ``baseline``; ``MGID_CPU_ISA=baseline`` forces the latter).
    """
    if _C is None:
        return {"extension": False, "cuda": False, "torch": torch.__version__, "cuda_arch_list": None,
                "error": EXTENSION_ERROR}
    return {
        "extension": True,
        "cuda": bool(torch.ops.mgid.built_with_cuda()),
        "torch": str(torch.ops.mgid.built_torch_version()),
        "cuda_arch_list": str(torch.ops.mgid.built_cuda_arch_list()) or None,
        "runtime_torch": torch.__version__,
        "cpu_isa": str(torch.ops.mgid.cpu_isa()),
    }

if _C is not None:
    from mgid.ops import _registration  # noqa: F401,E402  (fakes and autograd of torch.ops.mgid.*)
