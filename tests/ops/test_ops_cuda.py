"""The CUDA kernels on a GPU: what the CPU-kernel tests cannot see (issue 9).

Over 400 lines because it is the one GPU check of every kernel (run together on a lent GPU by
tools/gpu_check.sh); one file keeps that run a single pytest selection.

Every test is marked ``cuda`` (tests/conftest.py skips it with a reason where there is no GPU or
no CUDA build). The bodies take a ``device`` argument internally (``_check_*``), so their logic
also runs on the C++ CPU kernels; the tests themselves always pass ``"cuda"``.

1. k-means above the grid (n > 1024 values, the BSW mask's path at training shapes): the CUDA
   threshold equals the CPU float64 reference (one float64 ulp allowed), bitwise equals the
   reference run on the same GPU tensors, and the masks are identical; heavy-tailed inputs and
   inputs with ties (duplicates, symmetric covariances, exactly equal entries).
2. The memory update over many 128-query tiles (N not a multiple of 128 too), items that no query
   is assigned to, both ``max_over_assigned`` settings: against the reference on the GPU and
   against the C++ CPU kernel, whose per-tile summation order is the CUDA kernel's.
3. M = 256 (kMaxItems) in fp32 for every memory op; the fp32 update at M = 256 needs the dynamic
   shared-memory opt-in (> 48 KiB); a float64 update past the device's opt-in limit must raise
   the clear RuntimeError of ``allow_shared_memory`` (M threshold from the kernel's formula).
4. fp16 / bf16 inputs for every op against the reference in float32 on the upcast inputs, with the
   output dtypes of the documented convention.
5. A non-default stream: every op launched on a side stream while the default stream sleeps,
   only the side stream synchronised: complete, correct results.
6. Bitwise repeatability: every op forward and backward, twice and after another workload.
   5 and 6 run every op of tests/ops/cases.py, every variant, on its inputs.

Tolerances. fp32 kernels vs the fp32 reference: the same math in another summation order (the
reference uses GEMMs and, for the update, ``index_add_``), so a few fp32 ulps of the accumulated
magnitudes: 2e-5 for reads and losses, 2e-4 (relative to the largest entry) for gradients, 1e-5
for the update (see ``UPDATE_TOL``). CUDA vs CPU kernel: the same per-tile order by design
(csrc/memory_math.h); only nvcc's FMA contraction (unless built with ``-fmad=false``, read from
setup.py) and exp (<= 2 ulp) differ, so 1e-5 relative, and bitwise-equal column maxima (pure score
arithmetic) when ``-fmad=false``. fp16/bf16: the kernels compute in fp32 and round each output
once, so 2 units of roundoff of the storage dtype (u = 2^-11 fp16, 2^-8 bf16) relative, plus an
absolute floor of 1e-5 of the largest entry and, for fp16, one subnormal step (2^-24); results of
GEMMs in half (feature_covariance and its backward) 8u. Inputs are constructed so that no query's
top-1 / top-2 (/ top-3) choice or triplet hinge is within 1e-3 of a tie (checked in float64 on the
values the kernel sees): a flipped argmax is a discontinuity, not rounding.
"""
from __future__ import annotations

import functools
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

from mgid import ops
from mgid.ops import reference
from tests.ops.cases import OP_CASES, Size, covariance_pair, query_and_items

cuda = pytest.mark.cuda

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "csrc"


@functools.cache
def csrc_constant(name: str) -> int:
    """The value of ``constexpr int[64_t] NAME = <int>;`` in csrc/ (exactly one definition)."""
    found = []
    for path in sorted(CSRC.glob("*.[ch]*")):
        found += re.findall(rf"constexpr\s+int(?:64_t)?\s+{name}\s*=\s*(\w+)\s*;", path.read_text())
    assert len(found) == 1, f"{name}: expected one definition in csrc/, found {found}"
    return int(found[0]) if found[0].isdigit() else csrc_constant(found[0])


def query_tile() -> int:
    return csrc_constant("kQueryTile")  # 128 queries per update / loss tile (one CUDA block)


def max_items() -> int:
    return csrc_constant("kMaxItems")  # 256


def update_tile_shared_bytes(acc_bytes: int, m: int) -> int:
    """Dynamic shared memory of one update tile (update_tile_shared_bytes in csrc/memory_cuda.cu):
    scores (K x M), weight (K), tile_max (M) in the accumulation type, assign (K) int32."""
    k = query_tile()
    return acc_bytes * (k * m + k + m) + 4 * k


def step_tile_shared_bytes(acc_bytes: int, m: int) -> int:
    """step_tile_shared_bytes of csrc/memory_cuda.cu with the update: 2 x 128 loss terms + the update tile."""
    return acc_bytes * 2 * query_tile() + update_tile_shared_bytes(acc_bytes, m)


DEFAULT_SHARED_BYTES = 48 * 1024  # above this a kernel must opt in (cudaFuncSetAttribute)
# cudaDevAttrMaxSharedMemoryPerBlockOptin where torch's device properties lack it (compute capability).
KNOWN_OPTIN_BYTES = {(8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448}


def shared_optin_bytes(device: torch.device | str = "cuda") -> int:
    props = torch.cuda.get_device_properties(torch.device(device))
    value = getattr(props, "shared_memory_per_block_optin", None)
    if value:
        return int(value)
    if (props.major, props.minor) in KNOWN_OPTIN_BYTES:
        return KNOWN_OPTIN_BYTES[(props.major, props.minor)]
    pytest.skip(f"unknown shared-memory opt-in limit of {props.name} (sm_{props.major}{props.minor})")


def fmad_disabled() -> bool:
    """Whether setup.py builds the CUDA sources with ``-fmad=false`` (and MGID_FAST_MATH is off): then
    every score q_hat . P is the same float on the CPU and the GPU."""
    try:
        text = (REPO / "setup.py").read_text()
    except OSError:
        return False
    fast = os.environ.get("MGID_FAST_MATH", "").strip().lower() in ("1", "true", "yes", "on")
    return "-fmad=false" in text and not fast


@pytest.fixture(autouse=True)
def _ieee_fp32_matmul():
    """The fp32 reference's GEMMs in full fp32 (no TF32), whatever another test left behind."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


# ---- helpers -----------------------------------------------------------------------------------

def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref(fn, *args, **kwargs):
    with ops.use_reference():
        return fn(*args, **kwargs)


MARGIN = 1e-3  # the smallest top-1/top-2 (and top-2/top-3, hinge) gap of the constructed queries


def query_margins(query: torch.Tensor, items: torch.Tensor, losses: bool) -> torch.Tensor:
    """Per query (N,), float64 on the values the kernel sees: the gap of the top-1 over the top-2
    score and, with ``losses``, also of the top-2 over the top-3 and of the triplet hinge
    d_pos - d_neg + 1 from its kink; the smallest of these."""
    q_hat = reference.normalized_queries(query.detach().double().cpu())
    p = items.detach().double().cpu()
    scores = q_hat @ p.t()
    top = scores.topk(min(3, p.shape[0]), dim=1)
    gap = top.values[:, 0] - top.values[:, 1]
    if losses:
        if p.shape[0] >= 3:
            gap = torch.minimum(gap, top.values[:, 1] - top.values[:, 2])
        d_pos = (q_hat - p[top.indices[:, 0]] + reference.TRIPLET_EPS).norm(dim=1)
        d_neg = (q_hat - p[top.indices[:, 1]] + reference.TRIPLET_EPS).norm(dim=1)
        gap = torch.minimum(gap, (d_pos - d_neg + reference.TRIPLET_MARGIN).abs())
    return gap


def memory_inputs(shape, m, *, dtype=torch.float32, items_dtype=None, device="cuda", seed=0, lonely=0,
                  losses=False, margin=MARGIN):
    """query (B, C, H, W) in ``dtype`` and unit items (M, C) in ``items_dtype`` (default ``dtype``),
    drawn in float64 on the CPU and cast, then made tie-free: a query within ``margin`` of a tie (see
    `query_margins`) is replaced by a copy of a clear query scaled by 1/2, 1 or 2 (exact in
    every dtype). ``lonely``: the last ``lonely`` items point away from every query (a large negative
    channel 0 where the queries' is large and positive), so no query is ever assigned to them."""
    b, c, h, w = shape
    q, p = query_and_items(_gen(seed), shape, m, torch.float64, torch.float64, "cpu", lonely)
    items = p.to(items_dtype or dtype)
    query = q.to(dtype)
    gap = query_margins(query, items, losses)
    bad = (gap < margin).nonzero()[:, 0]
    if bad.numel():
        clear = (gap >= margin).nonzero()[:, 0]
        assert clear.numel() > 0, "no clear query to copy"
        flat = reference.flatten_queries(query).clone()
        src = clear[torch.arange(bad.numel()) % clear.numel()]
        scale = (2.0 ** ((torch.arange(bad.numel()) % 3) - 1)).to(dtype)
        flat[bad] = flat[src] * scale[:, None]
        query = reference.unflatten_queries(flat, b, h, w).contiguous()
    assert bool((query_margins(query, items, losses) >= margin).all())
    return query.to(device), items.to(device)


def assignments(query: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Top-1 item of every query, float64 on the CPU (unambiguous for `memory_inputs`)."""
    q_hat = reference.normalized_queries(query.detach().double().cpu())
    return (q_hat @ items.detach().double().cpu().t()).argmax(dim=1)


def assert_close_scaled(actual, expected, rtol, atol_rel, atol_floor=0.0, msg=""):
    """assert_close with rtol and an absolute tolerance relative to the largest expected entry."""
    expected = expected.to(actual.device)
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=max(atol_rel * scale, atol_floor),
                               msg=(lambda m: f"{msg}: {m}") if msg else None)


def _grad(out, inp, grad_out=None):
    (g,) = torch.autograd.grad(out, inp, grad_out)
    return g


# ---- 1. k-means above the grid -------------------------------------------------------------------

KMEANS_KS = (1, 2, 7, 50)


def kmeans_values(kind: str, n: int, seed: int) -> torch.Tensor:
    """n float64 values on the CPU: ``exponential`` (heavy right tail), ``duplicates`` (7 distinct
    values, ties everywhere), ``cov_sqdiff`` (cross-frame variances (S1 - S2)^2 / 4 of covariances of
    features with log-normal channel scales: heavy-tailed, every off-diagonal value twice)."""
    g = _gen(seed)
    if kind == "exponential":
        return torch.rand(n, generator=g, dtype=torch.float64).clamp_min(1e-12).log().neg() ** 2
    if kind == "duplicates":
        return torch.randint(0, 7, (n,), generator=g).double() ** 2
    if kind == "cov_sqdiff":
        c = math.ceil(math.sqrt(n / 2))
        scale = torch.exp(0.75 * torch.randn(2, c, 1, 1, generator=g, dtype=torch.float64))
        f1 = scale * torch.randn(2, c, 16, 16, generator=g, dtype=torch.float64)
        f2 = f1 + 0.3 * scale * torch.randn(2, c, 16, 16, generator=g, dtype=torch.float64)
        vr = reference.cross_frame_variance(reference.feature_covariance(f1), reference.feature_covariance(f2))
        return vr.reshape(-1)[:n].contiguous()
    raise AssertionError(kind)


def _check_kmeans_threshold(kind: str, n: int, device: str) -> None:
    values = kmeans_values(kind, n, seed=n + len(kind))
    assert values.numel() == n > reference.KMEANS_GRID
    on_device = values.to(device)
    for k in KMEANS_KS:
        want = reference.kmeans1d_fast_threshold(values, k)  # CPU, float64
        got = torch.ops.mgid.bsw_threshold(on_device, k)
        assert got.device.type == torch.device(device).type and got.dtype == torch.float64 and got.dim() == 0
        # The reference on the same device computes the same sorted values and prefix sums (the same
        # ATen calls the kernel's inputs come from), so the same partition, bit for bit.
        same_device = reference.kmeans1d_fast_threshold(on_device, k)
        assert torch.equal(got, same_device), f"k {k}: kernel {got.item()!r}, reference on {device} {same_device.item()!r}"
        g, w = got.item(), want.item()
        assert abs(g - w) <= math.ulp(w), f"{kind} n {n} k {k}: kernel {g!r} vs CPU float64 reference {w!r}"
        assert torch.equal((on_device <= got).cpu(), values <= want), f"{kind} n {n} k {k}: masks differ"


@cuda
@pytest.mark.parametrize("n", [1025, 5000, 8192 * 4])
@pytest.mark.parametrize("kind", ["exponential", "duplicates", "cov_sqdiff"])
def test_kmeans_grid_threshold_matches_cpu_reference(kind, n):
    """n > 1024: the grid of 1024 candidates (512 equal-count + the last 512 positions), the block-wide
    DP layers and the parallel Lloyd stage; k 1, 2, 7, 50."""
    _check_kmeans_threshold(kind, n, "cuda")


def bsw_covariances(b: int, c: int, seed: int, ties: bool, dtype=torch.float64):
    """Two frames' covariances (B, C, C) of features (B, C, 16, 16), `tests.ops.cases.covariance_pair`,
    computed in float64 on the CPU (the GPU sees the same values) and cast to ``dtype``."""
    cov1, cov2 = covariance_pair(_gen(seed), (b, c, 16, 16), ties)
    return cov1.to(dtype), cov2.to(dtype)


def _check_bsw_mask_above_grid(dtype, ties: bool, device: str) -> None:
    cov1, cov2 = bsw_covariances(2, 64, seed=11 + ties, ties=ties, dtype=dtype)
    assert cov1.numel() == 8192
    for k in (5, 50):
        want = reference.bsw_mask(cov1, cov2, k, "fast")  # CPU
        got = ops.bsw_mask(cov1.to(device), cov2.to(device), k)
        assert got.dtype == torch.bool and got.shape == cov1.shape
        assert torch.equal(got.cpu(), want), (f"k {k}: {int((got.cpu() != want).sum())} of {want.numel()} mask "
                                              f"elements differ ({int(want.sum())} selected by the reference)")
        upper = cov1.shape[0] * 64 * 65 // 2
        assert 0 < int(want.sum()) < upper, (int(want.sum()), upper)  # neither empty nor the whole triangle


@cuda
@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_bsw_mask_above_grid_matches_cpu_reference(dtype, ties):
    """The BSW mask of B 2, C 64 covariances (8192 variances, the grid path) on the GPU equals the CPU
    reference's (float64 k-means of the same variances, element-wise ops bit-identical on both)."""
    _check_bsw_mask_above_grid(dtype, ties, "cuda")


# ---- 2. the memory update over many tiles ---------------------------------------------------------

# (score-like outputs: col_max; weighted sums, relative to their largest entry; new unit items)
UPDATE_TOL = {
    torch.float32: {"col_max": 2e-6, "sum": 1e-5, "items": 1e-5},
    torch.float64: {"col_max": 1e-12, "sum": 1e-11, "items": 1e-11},
}
UPDATE_SHAPES = [(8, 64, 32, 32), (5, 32, 29, 31), (1, 16, 100, 130)]  # N 8192, 4495, 13000 queries


def _check_update_many_tiles(shape, max_over_assigned: bool, dtype, device: str) -> None:
    b, c, h, w = shape
    n = b * h * w
    assert n > 8 * query_tile()
    m_used, lonely = 20, 4
    m = m_used + lonely
    q_cpu, p_cpu = memory_inputs(shape, m, dtype=dtype, device="cpu", seed=sum(shape), lonely=lonely)
    q, p = q_cpu.to(device), p_cpu.to(device)
    has_query = torch.bincount(assignments(q_cpu, p_cpu), minlength=m) > 0
    assert not has_query[m_used:].any() and int(has_query.sum()) >= m_used - 2, has_query

    col_max, wsum = ops.memory_update_stats(q, p, max_over_assigned)
    new = ops.memory_update(q, p, max_over_assigned)
    assert col_max.dtype == wsum.dtype == dtype and new.dtype == p.dtype
    assert col_max.shape == (m,) and wsum.shape == (m, c) and new.shape == (m, c)
    col_max, wsum, new = col_max.cpu(), wsum.cpu(), new.cpu()

    tol = UPDATE_TOL[dtype]
    others = {
        f"reference on {device}": (*_ref(ops.memory_update_stats, q, p, max_over_assigned),
                                   _ref(ops.memory_update, q, p, max_over_assigned)),
        "C++ CPU kernel": (*ops.memory_update_stats(q_cpu, p_cpu, max_over_assigned),
                           ops.memory_update(q_cpu, p_cpu, max_over_assigned)),
    }
    for name, (col_o, wsum_o, new_o) in others.items():
        col_o, wsum_o, new_o = col_o.cpu(), wsum_o.cpu(), new_o.cpu()
        torch.testing.assert_close(col_max, col_o, rtol=tol["col_max"], atol=tol["col_max"], msg=lambda s, name=name: f"col_max vs {name}: {s}")
        assert_close_scaled(wsum, wsum_o, rtol=tol["sum"], atol_rel=tol["sum"], msg=f"weighted_sum vs {name}")
        torch.testing.assert_close(new, new_o, rtol=tol["items"], atol=tol["items"], msg=lambda s, name=name: f"new items vs {name}: {s}")
    if device == "cuda" and fmad_disabled():
        # No FMA contraction on either side: every score, hence every column max, is the same float.
        assert torch.equal(col_max, others["C++ CPU kernel"][0].cpu()), "col_max differs from the CPU kernel's bits"

    # Items without a query (the float64 assignment of these tie-free inputs): -inf max over the
    # assigned ones, a zero weighted sum, and the new item is the old one (re-normalised).
    if max_over_assigned:
        assert torch.equal(torch.isfinite(col_max), has_query), (col_max, has_query)
    else:
        assert bool(torch.isfinite(col_max).all())
    assert torch.equal(wsum[~has_query], torch.zeros_like(wsum[~has_query]))
    assert bool((wsum[has_query].abs().sum(dim=1) > 0).all())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(new[~has_query], p_cpu[~has_query], rtol=4 * eps, atol=4 * eps)
    assert not torch.allclose(new[has_query], p_cpu[has_query])
    torch.testing.assert_close(new.norm(dim=1), torch.ones(m, dtype=dtype), rtol=8 * eps, atol=8 * eps)


@cuda
@pytest.mark.parametrize("max_over_assigned", [False, True], ids=["max_all", "max_assigned"])
@pytest.mark.parametrize("shape", UPDATE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_update_over_many_tiles_matches_reference_and_cpu_kernel(shape, max_over_assigned):
    """64 / 36 / 102 tiles of 128 queries (the last two partial), 4 items no query picks."""
    _check_update_many_tiles(shape, max_over_assigned, torch.float32, "cuda")


@cuda
@pytest.mark.parametrize("max_over_assigned", [False, True], ids=["max_all", "max_assigned"])
def test_update_over_many_tiles_float64(max_over_assigned):
    _check_update_many_tiles((5, 32, 29, 31), max_over_assigned, torch.float64, "cuda")


# ---- 3. M = 256 and the shared-memory limit -----------------------------------------------------------

FP32_TOL = 2e-5  # forward outputs of the fp32 kernels vs the fp32 reference
FP32_GRAD_TOL = 2e-4  # their gradients, relative to the largest entry


def _check_every_memory_op(q, p, dtype_tol, grad_tol, update_tol, seed: int) -> None:
    """read (both gtw) + backward, update + stats (both flags), losses + backward, against the
    reference on the same device and dtype."""
    g = _gen(seed)
    for gtw in (False, True):
        qf, qr = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
        out, out_r = ops.memory_read(qf, p, gtw), _ref(ops.memory_read, qr, p, gtw)
        torch.testing.assert_close(out, out_r, rtol=dtype_tol, atol=dtype_tol, msg=lambda s, gtw=gtw: f"read gtw={gtw}: {s}")
        grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
        assert_close_scaled(_grad(out, qf, grad_out), _grad(out_r, qr, grad_out), grad_tol, grad_tol,
                            msg=f"read backward gtw={gtw}")
    for flag in (False, True):
        col_max, wsum = ops.memory_update_stats(q, p, flag)
        col_r, wsum_r = _ref(ops.memory_update_stats, q, p, flag)
        torch.testing.assert_close(col_max, col_r, rtol=update_tol["col_max"], atol=update_tol["col_max"])
        assert_close_scaled(wsum, wsum_r, update_tol["sum"], update_tol["sum"], msg=f"weighted_sum flag={flag}")
        torch.testing.assert_close(ops.memory_update(q, p, flag), _ref(ops.memory_update, q, p, flag),
                                   rtol=update_tol["items"], atol=update_tol["items"])
    for gtw, flag in ((False, False), (True, True)):  # the fused step: every output and the one backward
        qf, qr = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
        kw = dict(grad_through_weights=gtw, max_over_assigned=flag, update="stats")
        st, st_r = ops.memory_step(qf, p, **kw), _ref(ops.memory_step, qr, p, **kw)
        torch.testing.assert_close(st.read, st_r.read, rtol=dtype_tol, atol=dtype_tol)
        torch.testing.assert_close(st.compactness, st_r.compactness, rtol=dtype_tol, atol=dtype_tol)
        torch.testing.assert_close(st.separateness, st_r.separateness, rtol=dtype_tol, atol=dtype_tol)
        torch.testing.assert_close(st.items.col_max, st_r.items.col_max, rtol=update_tol["col_max"],
                                   atol=update_tol["col_max"])
        assert_close_scaled(st.items.weighted_sum, st_r.items.weighted_sum, update_tol["sum"], update_tol["sum"],
                            msg=f"memory_step weighted_sum gtw={gtw}")
        grad_out = torch.randn(st.read.shape, generator=g, dtype=torch.float64).to(st.read)
        loss, loss_r = [(x.read * grad_out).sum() + 0.3 * x.compactness + 0.7 * x.separateness for x in (st, st_r)]
        assert_close_scaled(torch.autograd.grad(loss, qf)[0], torch.autograd.grad(loss_r, qr)[0], grad_tol, grad_tol,
                            msg=f"memory_step backward gtw={gtw}")
    qf, qr = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    c, s = ops.memory_losses(qf, p)
    c_r, s_r = _ref(ops.memory_losses, qr, p)
    torch.testing.assert_close(c, c_r, rtol=dtype_tol, atol=dtype_tol)
    torch.testing.assert_close(s, s_r, rtol=dtype_tol, atol=dtype_tol)
    for wc, ws in ((1.0, 0.0), (0.0, 1.0), (0.25, 0.75)):
        assert_close_scaled(torch.autograd.grad(wc * c + ws * s, qf, retain_graph=True)[0],
                            torch.autograd.grad(wc * c_r + ws * s_r, qr, retain_graph=True)[0],
                            grad_tol, grad_tol, msg=f"losses backward ({wc}, {ws})")


def _check_max_items_fp32(shape, device: str) -> None:
    m = max_items()
    q, p = memory_inputs(shape, m, dtype=torch.float32, device=device, seed=m + sum(shape), losses=True)
    _check_every_memory_op(q, p, FP32_TOL, FP32_GRAD_TOL, UPDATE_TOL[torch.float32], seed=3)


@cuda
@pytest.mark.parametrize("shape", [(2, 32, 16, 16), (3, 24, 13, 11)], ids=["N512", "N429"])
def test_max_items_float32_every_memory_op(shape):
    """M = kMaxItems = 256: the per-thread score arrays at their full size; the fp32 update tile needs
    133 KB of dynamic shared memory, above the 48 KiB default: the opt-in path."""
    m = max_items()
    assert update_tile_shared_bytes(4, m) > DEFAULT_SHARED_BYTES
    if update_tile_shared_bytes(4, m) > shared_optin_bytes():
        pytest.skip(f"this GPU cannot give {update_tile_shared_bytes(4, m)} bytes of shared memory to a block")
    _check_max_items_fp32(shape, "cuda")


def shared_memory_error(acc_bytes: int, m: int, optin: int) -> str:
    """The message of allow_shared_memory (csrc/cuda_utils.cuh) for the update at M = m."""
    return (f"mgid: memory_update needs {update_tile_shared_bytes(acc_bytes, m)} bytes of shared memory per block, "
            f"the device allows {optin}; use fewer memory items or float32 instead of float64")


@cuda
def test_update_float64_past_the_shared_memory_limit_raises_clearly():
    """float64 tiles need 8 * (128 M + 128 + M) + 512 bytes: past the device's opt-in limit (M 224 on
    an H200's 227 KB) the update must refuse with the sizes, before any launch; the largest M that
    fits must run (opt-in) and be right; the device must stay usable after the error."""
    optin = shared_optin_bytes()
    m_fail = next((m for m in range(1, max_items() + 1) if update_tile_shared_bytes(8, m) > optin), None)
    if m_fail is None:
        pytest.skip(f"every M <= {max_items()} fits in this GPU's {optin} bytes of shared memory per block")
    m_ok = m_fail - 1
    assert update_tile_shared_bytes(8, m_ok) <= optin < update_tile_shared_bytes(8, m_fail)
    shape = (2, 16, 12, 12)  # N 288: three tiles
    for m in sorted({m_fail, max_items()}):
        q, p = memory_inputs(shape, m, dtype=torch.float64, device="cuda", seed=m, margin=1e-9)
        expected = re.escape(shared_memory_error(8, m, optin))
        for flag in (False, True):
            with pytest.raises(RuntimeError, match=expected):
                ops.memory_update(q, p, flag)
            with pytest.raises(RuntimeError, match=expected):
                ops.memory_update_stats(q, p, flag)
    # The fused step's tile holds the update tile and the 2 x 128 loss terms.
    step_fail = next(m for m in range(2, max_items() + 1) if step_tile_shared_bytes(8, m) > optin)
    q, p = memory_inputs(shape, step_fail, dtype=torch.float64, device="cuda", seed=step_fail, margin=1e-9)
    with pytest.raises(RuntimeError, match=re.escape(
            f"mgid: memory_step needs {step_tile_shared_bytes(8, step_fail)} bytes of shared memory per block, "
            f"the device allows {optin}")):
        ops.memory_step(q, p)
    # Without the update the step needs only the loss terms and runs at any M.
    torch.testing.assert_close(ops.memory_step(q, p, update="none").compactness,
                               _ref(ops.memory_losses, q, p)[0], rtol=1e-11, atol=1e-11)
    torch.cuda.synchronize()  # nothing was launched, nothing is poisoned
    q, p = memory_inputs(shape, m_ok, dtype=torch.float64, device="cuda", seed=m_ok, margin=1e-9)
    if update_tile_shared_bytes(8, m_ok) > DEFAULT_SHARED_BYTES:
        for flag in (False, True):
            torch.testing.assert_close(ops.memory_update(q, p, flag), _ref(ops.memory_update, q, p, flag),
                                       rtol=1e-11, atol=1e-11)
    # The float32 tile of the same M is about half the size: it fits and runs.
    q32, p32 = memory_inputs(shape, m_fail, dtype=torch.float32, device="cuda", seed=m_fail)
    torch.testing.assert_close(ops.memory_update(q32, p32), _ref(ops.memory_update, q32, p32),
                               rtol=UPDATE_TOL[torch.float32]["items"], atol=UPDATE_TOL[torch.float32]["items"])
    torch.cuda.synchronize()


# ---- 4. fp16 and bf16 ---------------------------------------------------------------------------------

HALF = [torch.float16, torch.bfloat16]
UNIT_ROUNDOFF = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
SUBNORMAL_STEP = {torch.float16: 2.0 ** -24, torch.bfloat16: 0.0}  # fp16 gradients of the losses are subnormal


def assert_half_close(actual, expected_fp32, dtype, units: float = 2.0, atol_units: float | None = None,
                      msg: str = "") -> None:
    """A half-precision output against the fp32 reference: ``units`` roundoffs relative; absolute
    1e-5 of the largest entry (fp32 noise of a kernel that rounds once), or ``atol_units`` roundoffs of
    it (GEMMs whose partial sums may be rounded to the half type: cancellation), and for fp16 one
    subnormal step."""
    assert actual.dtype == dtype, f"{msg}: dtype {actual.dtype}, expected {dtype}"
    u = UNIT_ROUNDOFF[dtype]
    atol_rel = 1e-5 if atol_units is None else atol_units * u
    assert_close_scaled(actual.float(), expected_fp32.float(), rtol=units * u, atol_rel=atol_rel,
                        atol_floor=SUBNORMAL_STEP[dtype], msg=msg)


def _check_half_memory_ops(dtype, device: str) -> None:
    shape, m = (2, 32, 12, 20), 24  # N 480: three full tiles and one of 96
    g = _gen(29)
    for items_dtype in (torch.float32, dtype):
        q, p = memory_inputs(shape, m, dtype=dtype, items_dtype=items_dtype, device=device, seed=31, losses=True)
        q32, p32 = q.float(), p.float()  # the upcast inputs of the fp32 reference
        where = f"query {dtype}, items {items_dtype}"
        for gtw in (False, True):
            qh, qr = q.clone().requires_grad_(True), q32.clone().requires_grad_(True)
            out, out_r = ops.memory_read(qh, p, gtw), _ref(ops.memory_read, qr, p32, gtw)
            assert_half_close(out, out_r, dtype, msg=f"read gtw={gtw}, {where}")
            grad_out = torch.randn(out.shape, generator=g).to(device=device, dtype=dtype)
            assert_half_close(_grad(out, qh, grad_out), _grad(out_r, qr, grad_out.float()), dtype,
                              msg=f"read backward gtw={gtw}, {where}")
        qh, qr = q.clone().requires_grad_(True), q32.clone().requires_grad_(True)
        c, s = ops.memory_losses(qh, p)
        c_r, s_r = _ref(ops.memory_losses, qr, p32)
        assert_half_close(c, c_r, dtype, msg=f"compactness, {where}")
        assert_half_close(s, s_r, dtype, msg=f"separateness, {where}")
        for wc, ws in ((1.0, 0.0), (0.0, 1.0), (0.25, 0.75)):  # exact in both half types
            assert_half_close(torch.autograd.grad(wc * c + ws * s, qh, retain_graph=True)[0],
                              torch.autograd.grad(wc * c_r + ws * s_r, qr, retain_graph=True)[0], dtype,
                              msg=f"losses backward ({wc}, {ws}), {where}")
        for flag in (False, True):
            col_max, wsum = ops.memory_update_stats(q, p, flag)
            col_r, wsum_r = _ref(ops.memory_update_stats, q32, p32, flag)
            assert col_max.dtype == wsum.dtype == torch.float32  # statistics accumulate in fp32
            tol = UPDATE_TOL[torch.float32]
            torch.testing.assert_close(col_max, col_r, rtol=tol["col_max"], atol=tol["col_max"])
            assert_close_scaled(wsum, wsum_r, tol["sum"], tol["sum"], msg=f"weighted_sum, {where}")
            new, new_r = ops.memory_update(q, p, flag), _ref(ops.memory_update, q32, p32, flag)
            if items_dtype == torch.float32:  # fp32 items stay fp32 (mixed precision): fp32 accuracy
                assert new.dtype == torch.float32
                torch.testing.assert_close(new, new_r, rtol=tol["items"], atol=tol["items"])
            else:  # half items: the new items come back in their dtype
                assert_half_close(new, new_r, dtype, msg=f"update flag={flag}, {where}")


@cuda
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_memory_ops_match_fp32_reference(dtype):
    """fp16/bf16 queries (items fp32 or the same half type): read, losses and their backward come back
    in the query's dtype, the update statistics in fp32, the new items in the items' dtype."""
    _check_half_memory_ops(dtype, "cuda")


def positive_features(b: int, c: int, hw: int, seed: int):
    """Two frames' features (B, C, H, W) in float64 whose covariances are all well above 0 (a common
    component z0 in every channel, log-normal channel scales): no sign of a covariance depends on
    rounding, so the BSW gradient sign(S) / (B |mask|) is the same in half and in fp32."""
    g = _gen(seed)
    side = math.isqrt(hw)
    scale = torch.exp(0.5 * torch.randn(b, c, 1, 1, generator=g, dtype=torch.float64))
    z0 = torch.randn(b, 1, side, side, generator=g, dtype=torch.float64)
    f1 = scale * (z0 + 0.5 * torch.randn(b, c, side, side, generator=g, dtype=torch.float64))
    f2 = f1 + 0.3 * scale * torch.randn(b, c, side, side, generator=g, dtype=torch.float64)
    return f1, f2


def mask_jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


# The half-precision mask against the fp32 reference's (Jaccard overlap): the variances (S1 - S2)^2 / 4
# are computed in the half type (csrc/ops.cpp), which can move a k-means boundary. Measured on the C++
# CPU kernels (whose half arithmetic is the GPU's), positive_features seeds 41-60: fp16 mean 0.990,
# min 0.810; bf16 mean 0.983, min 0.798; seed 41 (used here) 1.0 for both. The exact check against the
# reference on the op's own variances is the strict one; this floor is a sanity bound.
HALF_MASK_JACCARD = {torch.float16: 0.75, torch.bfloat16: 0.75}
# bsw_loss end to end against the fp32 reference (its own covariances and mask), relative. Same 20
# seeds: fp16 max 0.029 (mean 0.010), bf16 max 0.086 (mean 0.034); about twice the worst seen.
HALF_BSW_LOSS_RTOL = {torch.float16: 0.06, torch.bfloat16: 0.15}


def _check_half_bsw_ops(dtype, device: str) -> None:
    k = 50
    u8 = 8.0  # GEMM outputs in half: rounding plus cuBLAS's reduced-precision split-K sums
    f1_64, f2_64 = positive_features(2, 32, 144, seed=41)
    f1, f2 = f1_64.to(device=device, dtype=dtype), f2_64.to(device=device, dtype=dtype)

    # feature_covariance and its backward (ATen GEMMs in the half type)
    fh, fr = f1.clone().requires_grad_(True), f1.float().requires_grad_(True)
    cov, cov_r = ops.feature_covariance(fh), reference.feature_covariance(fr)
    assert_half_close(cov, cov_r, dtype, units=u8, atol_units=2.0, msg="feature_covariance")
    grad_cov = torch.randn(cov.shape, generator=_gen(43)).to(device=device, dtype=dtype)
    assert_half_close(_grad(cov, fh, grad_cov), _grad(cov_r, fr, grad_cov.float()), dtype, units=u8,
                      atol_units=u8, msg="feature_covariance backward")

    # bsw_mask of half covariances: (a) exactly the reference's k-means of the variances the op
    # computes (in the half type, as csrc/ops.cpp), (b) close to the fp32 reference's mask.
    c1_64, c2_64 = reference.feature_covariance(f1_64), reference.feature_covariance(f2_64)
    c1, c2 = c1_64.to(device=device, dtype=dtype), c2_64.to(device=device, dtype=dtype)
    mask = ops.bsw_mask(c1, c2, k)
    assert mask.dtype == torch.bool and mask.shape == c1.shape
    vr = reference.cross_frame_variance(c1, c2)
    assert vr.dtype == dtype
    upper = torch.ones(32, 32, dtype=torch.bool, device=device).triu()
    own = (vr.double() <= reference.kmeans1d_fast_threshold(vr, k)) & upper
    assert torch.equal(mask, own), f"{int((mask != own).sum())} elements differ from the reference on the same variances"
    mask_r = reference.bsw_mask(c1.float(), c2.float(), k, "fast")
    jac = mask_jaccard(mask, mask_r)
    assert int(mask_r.sum()) > 0 and jac >= HALF_MASK_JACCARD[dtype], f"Jaccard {jac:.4f} vs the fp32 mask"

    # bsw_loss_masked (the kernels) on a fixed mask, signed covariances: loss in cov1's dtype, count fp32
    g = _gen(47)
    s1 = torch.randn(2, 32, 32, generator=g).to(device=device, dtype=dtype)
    s2 = torch.randn(2, 32, 32, generator=g).to(device=device, dtype=dtype)
    fixed = (torch.rand(2, 32, 32, generator=g) < 0.4).to(device)
    a, b = s1.clone().requires_grad_(True), s2.clone().requires_grad_(True)
    ar, br = s1.float().requires_grad_(True), s2.float().requires_grad_(True)
    loss, count = torch.ops.mgid.bsw_loss_masked(a, b, fixed)
    loss_r = reference.bsw_loss_masked(ar, br, fixed)
    assert count.dtype == torch.float32 and float(count.detach()) == float(fixed.sum())
    assert_half_close(loss, loss_r, dtype, msg="bsw_loss_masked")
    grads = torch.autograd.grad(loss, (a, b))
    grads_r = torch.autograd.grad(loss_r, (ar, br))
    for name, x, y in zip(("cov1", "cov2"), grads, grads_r):
        assert_half_close(x, y, dtype, msg=f"bsw_loss_masked backward {name}")

    # bsw_loss end to end: (a) against the fp32 reference chain on the op's own mask (the same
    # covariance GEMMs in half, the same selection), forward and backward; (b) the loss against the
    # fp32 reference with its own mask.
    h1, h2 = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    loss = ops.bsw_loss(h1, h2, k)
    assert loss.dtype == dtype and loss.dim() == 0
    g1, g2 = torch.autograd.grad(loss, (h1, h2))
    assert g1.dtype == g2.dtype == dtype
    op_mask = ops.bsw_mask(ops.feature_covariance(f1), ops.feature_covariance(f2), k)
    r1, r2 = f1.float().requires_grad_(True), f2.float().requires_grad_(True)
    loss_m = reference.bsw_loss_masked(reference.feature_covariance(r1), reference.feature_covariance(r2), op_mask)
    assert_half_close(loss, loss_m, dtype, units=u8, msg="bsw_loss on its own mask")
    for name, x, y in zip(("features1", "features2"), (g1, g2), torch.autograd.grad(loss_m, (r1, r2))):
        assert_half_close(x, y, dtype, units=u8, atol_units=u8, msg=f"bsw_loss backward {name}")
    loss_full = _ref(ops.bsw_loss, f1.float(), f2.float(), k)
    torch.testing.assert_close(loss.float(), loss_full, rtol=HALF_BSW_LOSS_RTOL[dtype], atol=0.0)


@cuda
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_bsw_ops_match_fp32_reference(dtype):
    """feature_covariance (+ backward) and bsw_loss come back in the features' dtype, the mask is bool,
    bsw_loss_masked gives (loss in cov1's dtype, count in fp32)."""
    _check_half_bsw_ops(dtype, "cuda")


# ---- every op, for the stream and repeatability tests --------------------------------------------------

# Both sizes in every run: one partial tile and covariances of 128 values (the k-means without the grid);
# N 1920 queries (15 tiles), 2 items no query picks, and covariances of 4096 values (the grid path).
OP_SIZES = (Size((2, 8, 3, 5), 6), Size((4, 32, 24, 20), 20, lonely=2))
# The stream test runs every op in fp32 and these also in one half type (each sleep costs a second).
STREAM_HALF = {"memory_read": torch.float16, "memory_update": torch.bfloat16, "memory_losses": torch.float16,
               "memory_step": torch.bfloat16, "feature_covariance": torch.float16, "bsw_loss_masked": torch.bfloat16}
STREAM_RUNS = [(name, torch.float32) for name in sorted(OP_CASES)] + sorted(STREAM_HALF.items())


def op_outputs(name: str, device, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    """Every variant of op ``name`` (tests/ops/cases.py) at both sizes: outputs and input gradients."""
    return [t for size in OP_SIZES for sample in OP_CASES[name].samples()
            for t in sample.run(device, dtype, size, seed)]


def _cpu(outputs) -> list[torch.Tensor]:
    return [t.detach().to("cpu") for t in outputs]


def assert_same_outputs(got, want, exact: bool, what: str) -> None:
    assert len(got) == len(want), what
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{what}, output {i}: {a.dtype} {a.shape} vs {b.dtype} {b.shape}"
        if exact or a.dtype == torch.bool:
            assert torch.equal(a, b), f"{what}, output {i}: not bitwise equal (max diff {(a.double() - b.double()).abs().max()})"
        else:  # cuBLAS may pick another GEMM implementation when several streams are busy
            tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(a.dtype, 1e-5)
            assert_close_scaled(a, b, rtol=tol, atol_rel=tol, msg=f"{what}, output {i}")


# ---- 5. a non-default stream ------------------------------------------------------------------------

SLEEP_MS = 1000.0  # the default stream stays busy this long while the side stream works


def _sleep_cycles(ms: float) -> int:
    """GPU clock cycles of torch.cuda._sleep that last about ``ms`` milliseconds (measured)."""
    cycles = 10 ** 7
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * ms / max(start.elapsed_time(end), 1e-3))


@cuda
@pytest.mark.parametrize("name,dtype", STREAM_RUNS, ids=[f"{n}-{d}" for n, d in STREAM_RUNS])
def test_ops_run_on_the_current_stream(name, dtype):
    """Inputs made on a fresh side stream, the op (forward and backward) launched there while the
    default stream is blocked by a ~1 s sleep, results copied to the host through the side stream
    only: they must be complete and equal to the default stream's, and the default stream still
    busy (nothing waited for it). A kernel launched on the default stream would still be queued
    behind the sleep: the copy would read the buffers before it ran (the side stream's buffers hold
    a warm-up run's results of other inputs, so stale data cannot pass for the answer)."""
    case = f"{name} {dtype}"
    uses_cublas = OP_CASES[name].uses_blas

    def build(device, seed):
        return op_outputs(name, device, dtype, seed)

    seed = 101
    want = _cpu(build("cuda", seed))  # default stream
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        _cpu(build("cuda", seed + 7))  # warm-up on the side stream: its allocator blocks, cuBLAS workspace
    side.synchronize()
    cycles = _sleep_cycles(SLEEP_MS)
    torch.cuda._sleep(cycles)  # the default stream is busy from here on
    start = time.perf_counter()
    with torch.cuda.stream(side):
        assert torch.cuda.current_stream() == side
        outputs = build("cuda", seed)  # inputs copied to the GPU on the side stream, the op launched there
        side.synchronize()  # the side stream only
        got = _cpu(outputs)  # copies on the side stream too
    elapsed = time.perf_counter() - start
    still_busy = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    assert still_busy, (f"{case}: the side-stream work took {elapsed:.2f} s and the {SLEEP_MS / 1000:.1f} s sleep on "
                        "the default stream was over: the op waited for the default stream (or the device)")
    assert_same_outputs(got, want, exact=not uses_cublas, what=f"{case} on a side stream")


# ---- 6. bitwise repeatability ----------------------------------------------------------------------------

def _other_workload(device) -> list[torch.Tensor]:
    """Different ops, shapes and allocations; the returned tensors stay alive so that the next run's
    buffers sit at other addresses."""
    keep = [torch.empty(n, device=device) for n in (1, 4097, 123457)]
    q, p = memory_inputs((3, 24, 17, 19), 7, device="cpu", seed=5)
    q, p = q.to(device), p.to(device)
    keep += [ops.memory_update(q, p), ops.memory_read(q, p), *ops.memory_losses(q, p)]
    keep.append(torch.ops.mgid.bsw_threshold(kmeans_values("exponential", 3000, 9).to(device), 5))
    a = torch.randn(300, 500, generator=_gen(3)).to(device)
    keep.append(a @ a.t())
    return keep


REPEAT_RUNS = [(name, dtype) for name in sorted(OP_CASES) for dtype in OP_CASES[name].dtypes]


@cuda
@pytest.mark.parametrize("name,dtype", REPEAT_RUNS, ids=[f"{n}-{d}" for n, d in REPEAT_RUNS])
def test_every_op_is_bitwise_repeatable(name, dtype):
    """Fixed tiles and a fixed reduction order, no float atomics: the same inputs give the same bits,
    run twice in a row and again after another workload (other shapes, other buffer addresses)."""
    _check_repeatable(name, dtype, "cuda")


def _check_repeatable(name: str, dtype: torch.dtype, device: str) -> None:
    case = f"{name} {dtype}"
    first = _cpu(op_outputs(name, device, dtype, 202))
    second = _cpu(op_outputs(name, device, dtype, 202))
    keep = _other_workload(device)
    third = _cpu(op_outputs(name, device, dtype, 202))
    del keep
    assert_same_outputs(second, first, exact=True, what=f"{case}, second run")
    assert_same_outputs(third, first, exact=True, what=f"{case}, after another workload")
