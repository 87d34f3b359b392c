"""The two CPU copies of the memory kernels (baseline x86-64 and AVX2, csrc/memory_cpu_kernels.h) agree bit for bit.

The AVX2 copy runs where the CPU has AVX2; ``MGID_CPU_ISA=baseline`` forces the other. Neither enables FMA
and both call the same libm, so every output must be identical, not merely close.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mgid.ops as ops

pytestmark = pytest.mark.skipif(not ops.fused_available("cpu"), reason="mgid._C extension not built")


def run_every_memory_op(dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    query = torch.randn(2, 24, 13, 17, generator=g).to(dtype)  # 442 queries: full and partial lane groups and tiles
    items = F.normalize(torch.randn(20, 24, generator=g), dim=1)
    outs: list[torch.Tensor] = []
    for gtw in (False, True):
        q = query.clone().requires_grad_(True)
        step = ops.memory_step(q, items, grad_through_weights=gtw, update="stats")
        loss = (step.read.float() * 0.5).square().sum() + step.compactness + 0.3 * step.separateness
        outs += [step.read, step.compactness, step.separateness, *step.items, torch.autograd.grad(loss, q)[0]]
        q = query.clone().requires_grad_(True)
        read = ops.memory_read(q, items, gtw)
        outs += [read, torch.autograd.grad(read.float().square().sum(), q)[0]]
    q = query.clone().requires_grad_(True)
    c, s = ops.memory_losses(q, items)
    outs += [c, s, torch.autograd.grad(c + s, q)[0], ops.memory_update(query, items, True),
             *ops.memory_update_stats(query, items, False)]
    return [t.detach() for t in outs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_avx2_and_baseline_copies_are_bitwise_equal(monkeypatch, dtype):
    monkeypatch.delenv("MGID_CPU_ISA", raising=False)
    default_isa = torch.ops.mgid.cpu_isa()
    if default_isa != "avx2":
        pytest.skip(f"this CPU runs the {default_isa} copy only (no AVX2)")
    fast = run_every_memory_op(dtype)
    monkeypatch.setenv("MGID_CPU_ISA", "baseline")
    assert torch.ops.mgid.cpu_isa() == "baseline"
    base = run_every_memory_op(dtype)
    for i, (a, b) in enumerate(zip(fast, base)):
        assert torch.equal(a, b), f"output {i}: max difference {(a.double() - b.double()).abs().max()}"


def test_build_info_reports_the_cpu_copy(monkeypatch):
    monkeypatch.setenv("MGID_CPU_ISA", "baseline")
    assert ops.build_info()["cpu_isa"] == "baseline"
