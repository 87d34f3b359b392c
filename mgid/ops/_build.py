"""Loads the compiled extension ``mgid._C`` and says how it was built.

A checkout's own ``mgid/`` shadows an installed copy when a script runs from the checkout
(``python train.py``: the script's folder comes first on ``sys.path``). When the checkout has no
extension of its own, the one ``pip install .`` put in site-packages is loaded instead, provided it
was built from the same kernel sources as the checkout's ``csrc/`` (docs/INSTALL.md).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from mgid.ops._source_hash import kernel_source_sha256

PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: ``csrc/`` beside the package: present in a checkout, absent in an installed copy.
CHECKOUT_CSRC = PACKAGE_DIR.parent / "csrc"


def _installed_extension_paths() -> list[Path]:
    """``mgid/_C*.so`` files of other copies of mgid on ``sys.path`` (site-packages), first match first."""
    found = []
    for entry in sys.path:
        package = Path(entry or ".").resolve() / "mgid"
        if not package.is_dir() or package == PACKAGE_DIR:
            continue
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = package / f"_C{suffix}"
            if candidate.is_file():
                found.append(candidate)
    return found


def _load_from(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("mgid._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # registers the torch.ops.mgid.* kernels
    sys.modules["mgid._C"] = module
    return module


def _built_source_sha256() -> str:
    op = getattr(torch.ops.mgid, "built_source_sha256", None)  # absent from builds that predate the fingerprint
    return str(op()) if op is not None else ""


def _built_debug() -> bool:
    op = getattr(torch.ops.mgid, "built_debug", None)  # absent from builds that predate MGID_DEBUG
    return bool(op()) if op is not None else False


def _load_extension() -> tuple[ModuleType | None, str | None, Path | None]:
    """(the extension, why it is missing or unusable, the file it came from)."""
    try:
        from mgid import _C
        if CHECKOUT_CSRC.is_dir() and _built_source_sha256() != kernel_source_sha256(CHECKOUT_CSRC):
            warnings.warn(f"{_C.__file__} was built from other kernel sources than {CHECKOUT_CSRC} holds now: "
                          "rebuild it (`make install`, or `pip install --no-build-isolation -e .`)", stacklevel=2)
        return _C, None, Path(_C.__file__)
    except ImportError as err:
        local_error = f"cannot import mgid._C ({err})"
    if not CHECKOUT_CSRC.is_dir():
        return None, local_error, None
    want = kernel_source_sha256(CHECKOUT_CSRC)
    for path in _installed_extension_paths():
        try:
            module = _load_from(path)
        except ImportError as err:  # built for another torch or Python
            local_error = f"{local_error}; the installed {path} does not load ({err})"
            continue
        if _built_source_sha256() == want:
            return module, None, path
        # Its ops are registered now (the dispatcher cannot forget them) but nothing dispatches to them.
        sys.modules.pop("mgid._C", None)
        return None, (f"this checkout has no built extension, and the installed one ({path}) was built from other "
                      f"kernel sources than {CHECKOUT_CSRC}"), None
    return None, local_error, None


_C, EXTENSION_ERROR, EXTENSION_PATH = _load_extension()
#: How to get the kernels, for messages that end on the reference.
BUILD_HINT = ("run `pip install .` in the checkout (a C++ compiler and, for the CUDA kernels, the CUDA toolkit; "
              "docs/INSTALL.md)")


def extension_loaded() -> bool:
    return _C is not None


def build_info() -> dict:
    """How the extension was built.

    Returns:
        ``{"extension": bool, "cuda": bool, "torch": str, "cuda_arch_list": str | None, ...}``: ``cuda`` is True
        when the CUDA kernels were compiled in; ``torch`` the torch version it was built against; ``cpu_isa`` the
        copy of the CPU memory kernels that runs here (``avx2`` where the CPU has it, else ``baseline``;
        ``MGID_CPU_ISA=baseline`` forces the latter); ``debug`` True for an ``MGID_DEBUG=1`` build (unoptimised,
        with debug information and extra checks: not for timing); ``path`` the file loaded; ``source_sha256`` the
        fingerprint of the ``csrc/`` it was built from; ``error`` why it is missing, when it is.
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
        "debug": _built_debug(),
        "path": str(EXTENSION_PATH),
        "source_sha256": _built_source_sha256(),
    }


if _C is not None:
    from mgid.ops import _registration  # noqa: F401,E402  (fakes and autograd of torch.ops.mgid.*)
