"""Builds the extension ``mgid._C`` from ``csrc/``.

CUDA sources are compiled by nvcc when the installed torch has CUDA (``torch.version.cuda`` is
not None), a CPU-only extension is built otherwise. ``MGID_FORCE_CUDA=1`` makes a missing CUDA
toolchain an error instead; ``MGID_FORCE_CPU=1`` skips the CUDA sources.
"""
import glob
import os
import re
import shutil

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


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _truthy("MGID_FORCE_CPU"):
        return False
    have_torch_cuda = torch.version.cuda is not None
    have_nvcc = CUDA_HOME is not None and (shutil.which("nvcc") or os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    if _truthy("MGID_FORCE_CUDA") and not (have_torch_cuda and have_nvcc):
        raise RuntimeError(f"MGID_FORCE_CUDA=1 but torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}")
    if have_torch_cuda and not have_nvcc:
        raise RuntimeError(
            f"torch {torch.__version__} has CUDA {torch.version.cuda} but no nvcc was found (CUDA_HOME={CUDA_HOME!r}); "
            "install the CUDA toolkit, set CUDA_HOME, or build CPU-only with MGID_FORCE_CPU=1")
    return have_torch_cuda


def _nvcc_flags() -> list[str]:
    """nvcc flags. ``-fmad=false``: the host compiler (no -mfma) never contracts a*b + c, so nvcc must
    not either; then every score q_hat . P, and so every top-1 / top-2 choice, is the same float on
    the CPU and the GPU (only exp differs, by <= 2 ulp). ``MGID_FAST_MATH=1`` trades that for speed."""
    if _truthy("MGID_FAST_MATH"):
        return ["-O3", "--use_fast_math"]
    return ["-O3", "-lineinfo", "-fmad=false"]


def extensions():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    # Values are stringised in C++ (MGID_STR): quotes or ';' would not survive the build's shell.
    defines = [("MGID_TORCH_VERSION", torch.__version__)]
    cxx_flags = ["-O3"]  # the C++ standard is the one torch.utils.cpp_extension picks for this torch
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
