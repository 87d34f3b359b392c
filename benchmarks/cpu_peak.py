"""What this CPU can do at most: the FLOP-rate limits the de-raining benchmark compares its speeds with.

Two limits per arithmetic, both for the threads torch uses:

* **theoretical peak** = threads x clock x FLOP per cycle per core, where FLOP per cycle comes from the CPU's flags
  (`FLOP_PER_CYCLE`; two vector FMA units per core assumed, as Intel Xeon and AMD EPYC server cores have):
  fp32 on AVX512F 2 x 16 lanes x 2 (multiply-add) = 64, on AVX2 2 x 8 x 2 = 32; bf16 on AMX-BF16 1024 (one
  16x32 by 32x16 tile product per 16 cycles), on AVX512-BF16 2 x 32 x 2 = 128 (``vdpbf16ps``). The clock is the
  largest of ``cpuinfo_max_freq`` (sysfs) and ``cpu MHz`` (/proc/cpuinfo): in a virtual machine the latter is
  the nominal clock, and turbo can exceed it, so a share of this peak can pass 100 %.
* **measured GEMM** = the FLOP rate of a large ``torch.mm`` in that dtype (oneDNN's best case on this machine):
  what a network of 3x3 convolutions could reach at most in practice.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from mgid.precision import cpu_info

#: FLOP per cycle per core of each arithmetic by the best instruction set torch may use (`isa_of`).
FLOP_PER_CYCLE = {("fp32", "avx512"): 64, ("fp32", "avx2"): 32, ("fp32", "default"): 8,
                  ("bf16", "amx"): 1024, ("bf16", "avx512_bf16"): 128}
#: Side of the square matrices of the measured GEMM.
GEMM_SIZE = 2048


def clock_ghz() -> tuple[float | None, str]:
    """(clock in GHz, where it was read): the larger of sysfs ``cpuinfo_max_freq`` and /proc/cpuinfo ``cpu MHz``."""
    found: list[tuple[float, str]] = []
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().strip())
        found.append((khz / 1e6, "sysfs cpuinfo_max_freq"))
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("cpu MHz"):
                found.append((float(line.split(":")[1]) / 1e3, "/proc/cpuinfo cpu MHz"))
                break
    except (OSError, ValueError, IndexError):
        pass
    if not found:
        return None, "unknown (no sysfs cpufreq, no cpu MHz in /proc/cpuinfo)"
    return max(found)


def isa_of(precision: str) -> str | None:
    """The instruction set a ``precision`` (fp32/bf16) runs on here, as `FLOP_PER_CYCLE` names it (None: bf16 is
    emulated, no peak), within torch's caps (ATEN_CPU_CAPABILITY, DNNL_MAX_CPU_ISA)."""
    info = cpu_info()
    if precision == "bf16":
        if info.capped_below_bf16 is not None:
            return None
        if "amx_bf16" in info.flags:
            return "amx"
        return "avx512_bf16" if "avx512_bf16" in info.flags else None
    if info.avx512_usable:
        return "avx512"
    return "avx2" if "avx2" in info.flags else "default"


def theoretical_peak(precision: str, threads: int) -> dict[str, Any]:
    """{gflops, formula, isa, clock_ghz, clock_source} of ``precision`` on ``threads`` cores (gflops None when
    unknown: emulated bf16 or no clock)."""
    isa = isa_of(precision)
    ghz, source = clock_ghz()
    per_cycle = FLOP_PER_CYCLE.get((precision, isa)) if isa else None
    if per_cycle is None or ghz is None:
        return {"gflops": None, "formula": f"no peak: {precision} on {isa or 'emulation'}", "isa": isa,
                "clock_ghz": ghz, "clock_source": source}
    return {"gflops": round(threads * ghz * per_cycle, 1),
            "formula": f"{threads} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({precision} on {isa})",
            "isa": isa, "clock_ghz": ghz, "clock_source": source}


def measured_gemm(precision: str, size: int = GEMM_SIZE, repeats: int = 3) -> float:
    """GFLOP/s of ``torch.mm`` of two ``size`` x ``size`` matrices in ``precision`` (best of ``repeats``)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(dtype)
    b = torch.randn(size, size, generator=gen).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return round(2 * size ** 3 / best / 1e9, 1)
