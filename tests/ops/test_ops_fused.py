"""The compiled kernels (C++ CPU kernel here; CUDA kernel on a GPU) against the PyTorch reference.

Every test runs on the CPU kernel, which shares its arithmetic with the CUDA kernel
(csrc/*_math.h); the `cuda` parametrisations run the CUDA kernel itself on a GPU machine.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import mgid.ops as ops
from tests.conftest import device_params
from tests.ops.cases import Size, make_inputs, samples

pytestmark = pytest.mark.skipif(not ops.fused_available("cpu"), reason="mgid._C extension not built")

DEVICES = device_params()


def ref(fn, *args, **kwargs):
    with ops.use_reference():
        return fn(*args, **kwargs)


TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


# ---- build ----------------------------------------------------------------------------------------

def _cuda_toolkit_here() -> bool:
    """Whether setup.py would find nvcc here (CUDA_HOME, else the toolkit's standard prefix)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return (Path(home) / "bin" / "nvcc").exists()


def test_build_flavour_matches_torch():
    """A CUDA torch on a machine with the CUDA toolkit must get the CUDA kernels: a silent CPU-only fallback turns
    this red (without a toolkit the build is CPU-only by design, with a warning: tests/ops/test_build.py)."""
    info = ops.build_info()
    assert info["extension"], info
    forced_cpu = os.environ.get("MGID_FORCE_CPU", "").strip().lower() in ("1", "true", "yes", "on")
    assert info["cuda"] == (torch.version.cuda is not None and _cuda_toolkit_here() and not forced_cpu), info
    if info["cuda"]:
        assert info["cuda_arch_list"], info


def test_default_path_is_fused_and_reference_is_selectable(monkeypatch):
    assert ops.op_path("cpu") == "fused C++ CPU kernels"
    with ops.use_reference():
        assert ops.op_path("cpu") == "PyTorch reference"
    monkeypatch.setenv("MGID_OPS", "reference")
    assert ops.op_path("cpu") == "PyTorch reference"
    monkeypatch.setenv("MGID_OPS", "bogus")
    with pytest.raises(ValueError, match="MGID_OPS"):
        ops.op_path("cpu")


def test_fused_path_gives_kernel_graph_nodes():
    query, items = make_inputs(1, 8, 4, 4, 5)
    query.requires_grad_(True)
    out = ops.memory_read(query, items)
    assert "mgid" in type(out.grad_fn).__name__
    with ops.use_reference():
        assert "mgid" not in type(ops.memory_read(query, items).grad_fn).__name__


# ---- forward and backward against the reference ------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grad_through_weights", [False, True])
def test_read_matches_reference(device, dtype, grad_through_weights):
    query, items = make_inputs(2, 16, 5, 7, 6, dtype, device)
    query.requires_grad_(True)
    out_f = ops.memory_read(query, items, grad_through_weights)
    out_r = ref(ops.memory_read, query, items, grad_through_weights)
    torch.testing.assert_close(out_f, out_r, atol=TOL[dtype], rtol=TOL[dtype])
    grad = torch.randn_like(out_f)
    (g_f,) = torch.autograd.grad(out_f, query, grad)
    (g_r,) = torch.autograd.grad(out_r, query, grad)
    torch.testing.assert_close(g_f, g_r, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_over_assigned", [False, True])
def test_update_matches_reference(device, max_over_assigned):
    # float64: an argmax decided by float rounding would make float32 comparisons flaky.
    query, items = make_inputs(3, 16, 9, 11, 7, torch.float64, device, seed=1)
    new_f = ops.memory_update(query, items, max_over_assigned)
    new_r = ref(ops.memory_update, query, items, max_over_assigned)
    torch.testing.assert_close(new_f, new_r, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(new_f.norm(dim=1), torch.ones(7, dtype=torch.float64, device=device))
    max_f, sum_f = ops.memory_update_stats(query, items, max_over_assigned)
    max_r, sum_r = ref(ops.memory_update_stats, query, items, max_over_assigned)
    torch.testing.assert_close(max_f, max_r)
    torch.testing.assert_close(sum_f, sum_r, atol=1e-12, rtol=1e-12)


def test_update_spans_many_tiles_and_unassigned_items():
    """Many tiles (N = 1200 >> 128) combine like an online softmax; an item nobody picks stays put."""
    query, items = make_inputs(2, 8, 20, 30, 4, torch.float64, seed=3)
    query, items = query.abs(), F.normalize(items.abs(), dim=1)  # every query is closer to these
    lonely = -torch.ones(1, 8, dtype=torch.float64) / 8 ** 0.5
    items = torch.cat([items, lonely], 0)
    for flag in (False, True):
        new = ops.memory_update(query, items, flag)
        torch.testing.assert_close(new, ref(ops.memory_update, query, items, flag), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(new[4], lonely[0])
        assert not torch.allclose(new[:4], items[:4])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_losses_match_reference(device, dtype):
    query, items = make_inputs(2, 16, 6, 5, 6, dtype, device, seed=2)
    query.requires_grad_(True)
    c_f, s_f = ops.memory_losses(query, items)
    c_r, s_r = ref(ops.memory_losses, query, items)
    torch.testing.assert_close(c_f, c_r, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(s_f, s_r, atol=TOL[dtype], rtol=TOL[dtype])
    for wc, ws in ((1.0, 0.0), (0.0, 1.0), (0.3, 0.7)):
        (g_f,) = torch.autograd.grad(wc * c_f + ws * s_f, query, retain_graph=True)
        (g_r,) = torch.autograd.grad(wc * c_r + ws * s_r, query, retain_graph=True)
        torch.testing.assert_close(g_f, g_r, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)
    # Only one output used: the other's gradient arrives as None.
    (g_f,) = torch.autograd.grad(ops.memory_losses(query, items)[1], query)
    (g_r,) = torch.autograd.grad(ref(ops.memory_losses, query, items)[1], query)
    torch.testing.assert_close(g_f, g_r, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 3, 10, 50])
def test_bsw_matches_reference(device, k):
    g = torch.Generator().manual_seed(k)
    f1 = torch.randn(2, 12, 6, 6, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    f2 = (f1.detach() + 0.3 * torch.randn(2, 12, 6, 6, generator=g, dtype=torch.float64).to(device)).requires_grad_(True)
    cov_f, cov_r = ops.feature_covariance(f1), ref(ops.feature_covariance, f1)
    torch.testing.assert_close(cov_f, cov_r)
    c2 = ops.feature_covariance(f2)
    assert torch.equal(ops.bsw_mask(cov_f, c2, k), ref(ops.bsw_mask, cov_f, c2, k))
    loss_f, loss_r = ops.bsw_loss(f1, f2, k), ref(ops.bsw_loss, f1, f2, k)
    torch.testing.assert_close(loss_f, loss_r)
    grads_f = torch.autograd.grad(loss_f, (f1, f2))
    grads_r = torch.autograd.grad(loss_r, (f1, f2))
    for a, b in zip(grads_f, grads_r):
        torch.testing.assert_close(a, b)


def test_bsw_empty_mask_gives_zero_loss_and_grad():
    cov = torch.randn(2, 4, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    loss, count = torch.ops.mgid.bsw_loss_masked(cov, cov.detach() * 2, mask)
    assert loss.item() == 0.0 and count.item() == 0.0
    (g,) = torch.autograd.grad(loss, cov)
    assert torch.count_nonzero(g) == 0


# ---- fuzz: random shapes, dtypes, layouts ----------------------------------------------------------

def _fuzz_case(rng: random.Random, device: str):
    b, c, h, w, m = rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 13), rng.randint(1, 13), rng.randint(2, 33)
    dtype = rng.choice([torch.float64, torch.float32])
    query, items = make_inputs(b, c, h, w, m, dtype, device, seed=rng.randint(0, 10**6))
    if rng.random() < 0.5:  # non-contiguous query: a channels-last copy or a strided slice
        query = query.contiguous(memory_format=torch.channels_last) if rng.random() < 0.5 else \
            torch.cat([query, query], dim=3)[..., ::2]
    if rng.random() < 0.3:
        items = items.t().contiguous().t()
    return query, items, dtype


@pytest.mark.parametrize("device", DEVICES)
def test_fuzz_memory_ops_against_reference(device):
    rng = random.Random(1234)
    for _ in range(25):
        query, items, dtype = _fuzz_case(rng, device)
        query.requires_grad_(True)
        gtw = rng.random() < 0.5
        out_f, out_r = ops.memory_read(query, items, gtw), ref(ops.memory_read, query, items, gtw)
        torch.testing.assert_close(out_f, out_r, atol=TOL[dtype], rtol=TOL[dtype])
        grad = torch.randn_like(out_f)
        torch.testing.assert_close(torch.autograd.grad(out_f, query, grad)[0],
                                   torch.autograd.grad(out_r, query, grad)[0],
                                   atol=TOL[dtype] * 20, rtol=TOL[dtype] * 20)
        lf, lr = ops.memory_losses(query, items), ref(ops.memory_losses, query, items)
        for a, b in zip(lf, lr):
            torch.testing.assert_close(a, b, atol=TOL[dtype] * 10, rtol=TOL[dtype] * 10)
        if dtype == torch.float64:  # float32 argmax ties flip under rounding; checked in float64
            flag = rng.random() < 0.5
            torch.testing.assert_close(ops.memory_update(query, items, flag),
                                       ref(ops.memory_update, query, items, flag), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_query_with_fp32_items(device, dtype):
    """fp16/bf16 queries accumulate in fp32; the items may stay fp32 (mixed precision training)."""
    query32, items = make_inputs(2, 16, 4, 6, 8, torch.float32, device, seed=5)
    query = query32.to(dtype).requires_grad_(True)
    out = ops.memory_read(query, items)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref(ops.memory_read, query.detach().float(), items),
                               atol=TOL[dtype], rtol=TOL[dtype])
    c, s = ops.memory_losses(query, items)
    c_r, s_r = ref(ops.memory_losses, query.detach().float(), items)
    torch.testing.assert_close(c.float(), c_r, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(s.float(), s_r, atol=TOL[dtype], rtol=TOL[dtype])
    (c + s).backward()
    assert query.grad.dtype == dtype and torch.isfinite(query.grad).all()
    new = ops.memory_update(query.detach(), items)
    assert new.dtype == torch.float32
    torch.testing.assert_close(new.norm(dim=1), torch.ones(8, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_bsw_loss_of_covariances_of_two_dtypes(device):
    """cov2 of another dtype than cov1: the forward computes in cov1's dtype, and so must the backward
    (it used to read cov2's float64 storage as float32); each gradient comes back in its input's dtype."""
    from mgid.ops import reference

    g = torch.Generator().manual_seed(5)
    c1 = torch.randn(2, 6, 6, generator=g).to(device).requires_grad_(True)
    c2 = torch.randn(2, 6, 6, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    mask = (torch.rand(2, 6, 6, generator=g) < 0.5).to(device)
    loss, _ = torch.ops.mgid.bsw_loss_masked(c1, c2, mask)
    loss.backward()
    r1 = c1.detach().clone().requires_grad_(True)
    r2 = c2.detach().float().clone().requires_grad_(True)
    ref = reference.bsw_loss_masked(r1, r2, mask)
    ref.backward()
    torch.testing.assert_close(loss, ref.to(loss.dtype))
    assert c1.grad.dtype == torch.float32 and c2.grad.dtype == torch.float64
    torch.testing.assert_close(c1.grad, r1.grad)
    torch.testing.assert_close(c2.grad, r2.grad.double())


# ---- gradcheck (float64) ------------------------------------------------------------------------------

GRADCHECK = Size((1, 5, 3, 2), 4)


@pytest.mark.parametrize("sample", samples(differentiable=True), ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_fused(device, sample):
    """Every op with an autograd formula, every variant, in float64 (tests/ops/cases.py). The public code's
    read half is detached by design (not its true derivative): only the q_hat half of the read is checked
    there, the whole read with the gradient through the weights."""
    args = sample.args(device, torch.float64, GRADCHECK, seed=7, requires_grad=True)
    assert torch.autograd.gradcheck(*sample.gradcheck_inputs(args))


# ---- opcheck and torch.compile ------------------------------------------------------------------------

OPCHECK = Size((2, 8, 3, 5), 6)


@pytest.mark.parametrize("sample", samples(), ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device, dtype, sample):
    """Every op, forward and backward, every variant (tests/ops/cases.py); differentiable arguments require grad."""
    opcheck(sample.case.op, sample.args(device, dtype, OPCHECK, seed=11, requires_grad=True))


def test_torch_compile_traces_the_ops_without_graph_breaks():
    query, items = make_inputs(2, 8, 4, 4, 6, torch.float32, seed=13)
    f2 = torch.randn(2, 8, 4, 4)

    def step(q, p, f):
        out = ops.memory_read(q, p)
        new = ops.memory_update(q, p)
        compact, _ = ops.memory_losses(q, p)
        return out.sum() + compact + ops.bsw_loss(q, f, 5), new

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    q = query.clone().requires_grad_(True)
    loss_c, new_c = compiled(q, items, f2)
    loss_c.backward()
    q2 = query.clone().requires_grad_(True)
    loss_e, new_e = step(q2, items, f2)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(new_c, new_e)
    torch.testing.assert_close(q.grad, q2.grad)


# ---- determinism, host syncs, errors ---------------------------------------------------------------

THREADS = Size((4, 32, 16, 16), 20)


@pytest.mark.parametrize("sample", samples(blas=False), ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_bitwise_deterministic_and_thread_count_independent(device, sample):
    """Every op but the BLAS GEMMs of feature_covariance, forward and backward (tests/ops/cases.py): the
    same bits with 1, more and again 1 thread."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n_threads in (1, max(2, threads), 1):
            torch.set_num_threads(n_threads)
            results.append(sample.run(device, torch.float32, THREADS, seed=17))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.cuda
def test_cuda_ops_do_not_synchronise_with_the_host():
    query, items = make_inputs(8, 64, 32, 32, 20, torch.float32, "cuda", seed=19)
    query.requires_grad_(True)
    f2 = torch.randn(8, 64, 32, 32, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = ops.memory_read(query, items)
        new = ops.memory_update(query.detach(), items)
        compact, sep = ops.memory_losses(query, items)
        loss = out.sum() + compact + sep + ops.bsw_loss(query, f2, 50)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(new).all()


CUDA_VS_CPU = Size((2, 64, 32, 32), 20)


@pytest.mark.cuda
@pytest.mark.parametrize("sample", samples("memory"), ids=str)
def test_cuda_kernel_matches_cpu_kernel(sample):
    """Same shared arithmetic on both devices (every memory op, forward and backward): results agree to
    float rounding."""
    a = sample.run("cpu", torch.float64, CUDA_VS_CPU, seed=23, requires_grad=False)
    b = sample.run("cuda", torch.float64, CUDA_VS_CPU, seed=23, requires_grad=False)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y.cpu(), atol=1e-12, rtol=1e-12)


@pytest.mark.cuda
def test_cuda_large_query_count_uses_64bit_indexing():
    """N*C past 2^31 elements (about 8.6 GB in fp32) exercises 64-bit offsets."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    query = torch.randn(1, 64, 6000, 6000, device="cuda")  # 2.3e9 elements
    items = F.normalize(torch.randn(20, 64, device="cuda"), dim=1)
    out = ops.memory_read(query, items)
    tail = query[..., -1, -1]
    torch.testing.assert_close(out[0, :64, -1, -1], F.normalize(tail, dim=1)[0])


def test_kernel_limits_and_bad_inputs_raise_clear_errors():
    query, items = make_inputs(1, 4, 2, 2, 300, torch.float32)
    with pytest.raises(RuntimeError, match="at most 256 memory items"):
        ops.memory_read(query, items)
    query, items = make_inputs(1, 4, 2, 2, 1, torch.float32)
    with pytest.raises(ValueError, match="at least 2 memory items"):
        ops.memory_losses(query, items)
    with pytest.raises(RuntimeError, match="items must have shape"):
        torch.ops.mgid.memory_read(query, items[:, :3], False)
    with pytest.raises(RuntimeError, match="floating"):
        torch.ops.mgid.memory_update(query.int(), items, False)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        torch.ops.mgid.memory_read_backward(torch.zeros(1, 3, 2, 2), query, items, False)
