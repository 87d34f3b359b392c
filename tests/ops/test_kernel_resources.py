"""Every CUDA kernel fits its launch on sm_80 and sm_90, read from the built extension (no GPU needed).

A kernel whose threads x registers exceed the 65,536 registers of a block fails at its first launch
("too many resources requested for launch"), which a CPU-only machine never sees. ``cuobjdump
--dump-resource-usage`` (CUDA toolkit, or the ``nvidia-cuda-cuobjdump`` wheel of the test extra) reads
the registers and static shared memory ptxas gave each kernel; the threads per launch come from the
constants in ``csrc/`` that the launches use. Dynamic shared memory (the update tile) is checked against
the device's opt-in limit at run time, before the launch (``allow_shared_memory``, a clear error).
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mgid.ops as mops

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"
#: Registers of one block (every architecture since sm_50).
REGISTERS_PER_BLOCK = 65536
#: Static shared memory of one block without opt-in.
STATIC_SHARED_BYTES = 48 * 1024
ARCHES = ("sm_80", "sm_90")


def constant(name: str) -> int:
    """The value of ``constexpr int[64_t] NAME = <int>;`` in csrc/ (exactly one definition)."""
    found = []
    for path in sorted(CSRC.glob("*.[ch]*")):
        found += re.findall(rf"constexpr\s+int(?:64_t)?\s+{name}\s*=\s*(\w+)\s*;", path.read_text())
    assert len(found) == 1, f"{name}: expected one definition in csrc/, found {found}"
    value = found[0]
    return int(value) if value.isdigit() else constant(value)


def launch_threads() -> dict[str, int]:
    """Most threads per block each kernel is launched with (mirrors the launches in csrc/*.cu)."""
    query = constant("kThreads")
    return {
        "read_forward_kernel": query, "read_backward_kernel": query, "update_tile_kernel": query,
        "losses_tile_kernel": query, "losses_backward_kernel": query, "step_tile_kernel": query,
        "step_backward_kernel": query,
        "update_combine_kernel": constant("kCombineThreads"), "update_finish_kernel": constant("kCombineThreads"),
        "losses_combine_kernel": 1, "bsw_combine_kernel": 1,
        "kmeans_kernel": constant("kKmeansThreads"), "bsw_tile_kernel": constant("kElementLanes"),
        "bsw_backward_kernel": constant("kBswBackwardThreads"),
    }


def find_cuobjdump() -> str | None:
    for candidate in (shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"),
                                                              "bin", "cuobjdump")):
        if candidate and os.path.isfile(candidate):
            return candidate
    spec = importlib.util.find_spec("nvidia")  # the nvidia-cuda-cuobjdump wheel: nvidia/cu*/bin/cuobjdump
    for root in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(root).glob("cu*/bin/cuobjdump")):
            return str(path)
    return None


def resource_usage(binary: str, tool: str) -> dict[str, list[tuple[str, dict[str, int]]]]:
    """``{arch: [(mangled kernel name, {"REG": n, "SHARED": n, ...}), ...]}`` from cuobjdump."""
    text = subprocess.run([tool, "--dump-resource-usage", binary], capture_output=True, text=True, check=True,
                          timeout=300).stdout
    usage: dict[str, list[tuple[str, dict[str, int]]]] = {}
    arch, function = None, None
    for line in text.splitlines():
        line = line.strip()
        if m := re.match(r"arch = (sm_\d+)", line):
            arch = m.group(1)
        elif m := re.match(r"Function (\S+):", line):
            function = m.group(1)
        elif function and line.startswith("REG:"):
            fields = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            usage.setdefault(arch, []).append((function, fields))
            function = None
    return usage


@pytest.fixture(scope="module")
def usage():
    info = mops.build_info()
    if not info.get("extension") or not info.get("cuda"):
        pytest.skip(f"the extension was built without CUDA ({info}); nothing to check")
    if info.get("debug"):  # -G keeps device functions out of line and unoptimised: not the launches that ship
        pytest.skip("an MGID_DEBUG=1 build: registers and shared memory are checked on release builds")
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (CUDA toolkit bin/ or `pip install nvidia-cuda-cuobjdump`)")
    import mgid._C as ext

    return resource_usage(ext.__file__, tool)


def kernel_of(mangled: str, names: dict[str, int]) -> str | None:
    # Itanium mangling writes a name as its length and the name: "...13kmeans_kernelE..."
    hits = [n for n in names if f"{len(n)}{n}" in mangled]
    return hits[0] if len(hits) == 1 else None


@pytest.mark.parametrize("arch", ARCHES)
def test_every_kernel_fits_its_launch(usage, arch):
    threads = launch_threads()
    assert arch in usage, f"no {arch} code in the extension (built for {sorted(usage)}); see TORCH_CUDA_ARCH_LIST"
    seen = set()
    problems = []
    for mangled, fields in usage[arch]:
        name = kernel_of(mangled, threads)
        assert name is not None, f"{arch}: kernel {mangled} has no launch configuration in this test: add it"
        seen.add(name)
        regs = fields["REG"] * threads[name]
        if regs > REGISTERS_PER_BLOCK:
            problems.append(f"{name} ({mangled}): {fields['REG']} registers x {threads[name]} threads = {regs}")
        if fields.get("SHARED", 0) > STATIC_SHARED_BYTES:
            problems.append(f"{name}: {fields['SHARED']} bytes of static shared memory")
    assert not problems, f"{arch}: launches that cannot start: " + "; ".join(problems)
    assert seen == set(threads), f"{arch}: kernels not found in the binary: {sorted(set(threads) - seen)}"


def test_constants_are_read_from_the_sources():
    threads = launch_threads()
    assert threads["kmeans_kernel"] == 1024 and threads["read_forward_kernel"] == constant("kQueryTile")
    with pytest.raises(AssertionError, match="kNoSuchConstant"):
        constant("kNoSuchConstant")
