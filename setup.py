"""Builds the extension ``mgid._C`` from ``csrc/``.

CUDA sources are compiled by nvcc when the installed torch has CUDA (``torch.version.cuda`` is
not None) and nvcc is found; otherwise the CPU kernels alone are built, with a warning where torch
has CUDA but nvcc is missing. ``MGID_FORCE_CUDA=1`` makes a missing CUDA toolchain an error;
``MGID_FORCE_CPU=1`` skips the CUDA sources. ``MGID_DEBUG=1`` builds for a debugger: no optimisation, debug
information (``-G`` device code for cuda-gdb) and the extra checks of ``MGID_DEBUG`` in csrc/.
"""
import glob
import importlib.util
import os
import re
import sys

# torch derives the toolkit root from the nvcc on PATH; here that is a wrapper script in another
# folder, so point CUDA_HOME at the real toolkit before torch.utils.cpp_extension is imported.
_DEFAULT_CUDA_HOME = "/usr/local/cuda"
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
    if os.path.exists(os.path.join(_DEFAULT_CUDA_HOME, "bin", "nvcc")):
        os.environ["CUDA_HOME"] = os.path.realpath(_DEFAULT_CUDA_HOME)
# nvcc 13 has no sm_70 and, without a GPU to query, torch's default list fails: default to
# Ampere + Hopper. Users override with TORCH_CUDA_ARCH_LIST.
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
os.environ.setdefault("MAX_JOBS", str(min(os.cpu_count() or 2, 8)))

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_ONLY_WARNING = (
    "mgid: torch {torch} has CUDA {cuda} but no nvcc was found (CUDA_HOME={home!r}): building the C++ CPU kernels "
    "only; CUDA tensors will run the PyTorch reference ops. Install the CUDA toolkit (or set CUDA_HOME) and "
    "reinstall for the CUDA kernels; MGID_FORCE_CUDA=1 makes this an error.")


def _kernel_source_sha256() -> str:
    """The fingerprint of csrc/ (mgid/ops/_source_hash.py, loaded by path: mgid cannot be imported yet)."""
    spec = importlib.util.spec_from_file_location("_mgid_source_hash", os.path.join(HERE, "mgid", "ops", "_source_hash.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.kernel_source_sha256(os.path.join(HERE, "csrc"))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _truthy("MGID_FORCE_CPU"):
        return False
    have_torch_cuda = torch.version.cuda is not None
    # torch compiles with CUDA_HOME/bin/nvcc (CUDA_HOME is where it found nvcc on PATH, if not set).
    have_nvcc = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if _truthy("MGID_FORCE_CUDA") and not (have_torch_cuda and have_nvcc):
        raise RuntimeError(
            f"MGID_FORCE_CUDA=1 but torch.version.cuda={torch.version.cuda!r} and nvcc "
            f"{'found' if have_nvcc else 'not found'} (CUDA_HOME={CUDA_HOME!r}): install a CUDA build of torch and "
            "the CUDA toolkit, or unset MGID_FORCE_CUDA to build the CPU kernels only")
    if have_torch_cuda and not have_nvcc:
        message = CPU_ONLY_WARNING.format(torch=torch.__version__, cuda=torch.version.cuda, home=CUDA_HOME)
        # pip shows a build's output only with -v; `mgid info` and the training log say it again at run time.
        print(f"WARNING: {message}", file=sys.stderr, flush=True)
        return False
    return have_torch_cuda


def _debug() -> bool:
    """``MGID_DEBUG=1``: a debug build (``build_info()["debug"]`` says so at run time)."""
    return _truthy("MGID_DEBUG")


def _cxx_flags() -> list[str]:
    """Host compiler flags; the C++ standard is the one torch.utils.cpp_extension picks for this torch."""
    return ["-O0", "-g"] if _debug() else ["-O3"]


def _nvcc_flags() -> list[str]:
    """nvcc flags. ``-fmad=false``: the host compiler (no -mfma) never contracts a*b + c, so nvcc must
    not either; then every score q_hat . P, and so every top-1 / top-2 choice, is the same float on
    the CPU and the GPU (only exp differs, by <= 2 ulp). ``MGID_FAST_MATH=1`` trades that for speed.
    ``MGID_DEBUG=1``: host code ``-O0 -g``, device code ``-G`` (unoptimised, with the debug information
    cuda-gdb and compute-sanitizer use) instead of ``-O3 -lineinfo``; the math flag stays."""
    fast = _truthy("MGID_FAST_MATH")
    if _debug():
        return ["-O0", "-g", "-G", "--use_fast_math" if fast else "-fmad=false"]
    return ["-O3", "--use_fast_math"] if fast else ["-O3", "-lineinfo", "-fmad=false"]


def extensions():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    # Values are stringised in C++ (MGID_STR): quotes or ';' would not survive the build's shell.
    defines = [("MGID_TORCH_VERSION", torch.__version__), ("MGID_SOURCE_SHA256", _kernel_source_sha256())]
    if _debug():
        defines.append(("MGID_DEBUG", None))  # the MGID_DEBUG_CHECK checks of csrc/checks.h
    cxx_flags = _cxx_flags()
    if _want_cuda():
        arch = os.environ["TORCH_CUDA_ARCH_LIST"]
        defines += [("MGID_WITH_CUDA", None), ("MGID_CUDA_ARCH_LIST", re.sub(r"[;\s,]+", "/", arch.strip()))]
        return [CUDAExtension(
            "mgid._C", cpp_sources + cu_sources, define_macros=defines,
            extra_compile_args={"cxx": cxx_flags, "nvcc": _nvcc_flags()})]
    return [CppExtension("mgid._C", cpp_sources, define_macros=defines, extra_compile_args=cxx_flags)]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
