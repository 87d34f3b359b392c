"""The two CPU copies of the memory kernels (baseline x86-64 and AVX2, csrc/memory_cpu_kernels.h) agree bit for bit.

The AVX2 copy runs where the CPU has AVX2; ``MGID_CPU_ISA=baseline`` forces the other. Neither enables FMA
and both call the same libm, so every output must be identical, not merely close.
"""
from __future__ import annotations

import pytest
import torch

import mgid.ops as ops
from tests.ops.cases import FLOAT_DTYPES, Size, samples

pytestmark = pytest.mark.skipif(not ops.fused_available("cpu"), reason="mgid._C extension not built")

ISA = Size((2, 24, 13, 17), 20)  # 442 queries: full and partial lane groups and tiles


@pytest.mark.parametrize("sample", samples("memory"), ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_avx2_and_baseline_copies_are_bitwise_equal(monkeypatch, dtype, sample):
    """Every memory op, forward and backward (tests/ops/cases.py): outputs and input gradients."""
    monkeypatch.delenv("MGID_CPU_ISA", raising=False)
    default_isa = torch.ops.mgid.cpu_isa()
    if default_isa != "avx2":
        pytest.skip(f"this CPU runs the {default_isa} copy only (no AVX2)")
    fast = sample.run("cpu", dtype, ISA, seed=3)
    monkeypatch.setenv("MGID_CPU_ISA", "baseline")
    assert torch.ops.mgid.cpu_isa() == "baseline"
    base = sample.run("cpu", dtype, ISA, seed=3)
    for i, (a, b) in enumerate(zip(fast, base)):
        assert torch.equal(a, b), f"output {i}: max difference {(a.double() - b.double()).abs().max()}"


def test_build_info_reports_the_cpu_copy(monkeypatch):
    monkeypatch.setenv("MGID_CPU_ISA", "baseline")
    assert ops.build_info()["cpu_isa"] == "baseline"
