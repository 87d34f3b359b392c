"""`mgid.ops.memory_step`: read, losses and update in one pass, against the reference and the separate ops.

Runs the C++ CPU kernel here (it shares its arithmetic with the CUDA kernel, csrc/memory_math.h); the
`cuda` parametrisations run the CUDA kernel on a GPU machine. Its opcheck, float64 gradcheck and thread-count
check are those of every op (tests/ops/test_ops_fused.py, inputs from tests/ops/cases.py).
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import mgid.ops as ops
from mgid.models.memory import MemoryModule
from tests.conftest import device_params
from tests.ops.cases import make_inputs

pytestmark = pytest.mark.skipif(not ops.fused_available("cpu"), reason="mgid._C extension not built")

DEVICES = device_params()
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}


def reference_step(query, items, **kwargs):
    with ops.use_reference():
        return ops.memory_step(query, items, **kwargs)


def step_loss(step: ops.MemoryStep, grad_read: torch.Tensor, wc: float = 1.0, ws: float = 0.7) -> torch.Tensor:
    """A scalar that uses every differentiable output of the step."""
    loss = (step.read * grad_read).sum()
    if step.compactness is not None:
        loss = loss + wc * step.compactness + ws * step.separateness
    return loss


def check_step_against_reference(query, items, loss_tol_factor: float = 1.0, **kwargs) -> None:
    """memory_step on the fused path against the reference: every output it returns and the query's gradient.

    The update is compared in float64 only: float32 argmax ties may flip under rounding.
    """
    qf, qr = query.detach().clone().requires_grad_(True), query.detach().clone().requires_grad_(True)
    fused, refd = ops.memory_step(qf, items, **kwargs), reference_step(qr, items, **kwargs)
    tol = TOL[query.dtype]
    torch.testing.assert_close(fused.read, refd.read, atol=tol, rtol=tol)
    if kwargs.get("with_losses", True):
        ltol = tol * loss_tol_factor
        torch.testing.assert_close(fused.compactness, refd.compactness, atol=ltol, rtol=ltol)
        torch.testing.assert_close(fused.separateness, refd.separateness, atol=ltol, rtol=ltol)
    if query.dtype == torch.float64 and kwargs.get("update", "items") != "none":
        torch.testing.assert_close(fused.items, refd.items, atol=1e-10, rtol=1e-10)
    grad_read = torch.randn_like(fused.read)
    step_loss(fused, grad_read).backward()
    step_loss(refd, grad_read).backward()
    torch.testing.assert_close(qf.grad, qr.grad, atol=tol * 20, rtol=tol * 20)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grad_through_weights", [False, True])
@pytest.mark.parametrize("max_over_assigned", [False, True])
def test_step_matches_reference(device, dtype, grad_through_weights, max_over_assigned):
    query, items = make_inputs(2, 16, 9, 15, 10, dtype, device, seed=3)  # 270 queries: three tiles, one partial
    check_step_against_reference(query, items, grad_through_weights=grad_through_weights,
                                 max_over_assigned=max_over_assigned)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_step_equals_the_separate_fused_ops_bit_for_bit(device, dtype):
    """One set of scores for all three: the same numbers as memory_read, memory_losses, memory_update_stats."""
    query, items = make_inputs(3, 24, 11, 13, 20, dtype, device, seed=5)
    for max_over_assigned in (False, True):
        step = ops.memory_step(query, items, max_over_assigned=max_over_assigned, update="stats")
        assert torch.equal(step.read, ops.memory_read(query, items))
        compactness, separateness = ops.memory_losses(query, items)
        assert torch.equal(step.compactness, compactness) and torch.equal(step.separateness, separateness)
        col_max, weighted_sum = ops.memory_update_stats(query, items, max_over_assigned)
        assert torch.equal(step.items.col_max, col_max) and torch.equal(step.items.weighted_sum, weighted_sum)
        torch.testing.assert_close(ops.memory_step(query, items, max_over_assigned=max_over_assigned).items,
                                   ops.memory_update(query, items, max_over_assigned), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_step_backward_equals_the_separate_backwards(device):
    query, items = make_inputs(2, 32, 8, 8, 20, torch.float64, device, seed=7)
    for gtw in (False, True):
        q1, q2 = query.clone().requires_grad_(True), query.clone().requires_grad_(True)
        grad_read = torch.randn(2, 64, 8, 8, dtype=torch.float64, device=device)
        step_loss(ops.memory_step(q1, items, grad_through_weights=gtw), grad_read, 2.0, 0.3).backward()
        c, s = ops.memory_losses(q2, items)
        ((ops.memory_read(q2, items, gtw) * grad_read).sum() + 2.0 * c + 0.3 * s).backward()
        torch.testing.assert_close(q1.grad, q2.grad, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_saved_nearest_items_are_the_top_two(device):
    """The forward hands its top-1/top-2 to the backward; they must be the scores' two largest."""
    query, items = make_inputs(2, 16, 9, 15, 10, torch.float64, device, seed=4)
    top = torch.ops.mgid.memory_step(query, items, False, False, True, True)[5]
    scores = F.normalize(query.permute(0, 2, 3, 1).reshape(-1, 16), dim=1) @ items.t()
    assert torch.equal(top.long(), scores.topk(2, dim=1).indices)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_not_asked_for(device):
    query, items = make_inputs(1, 8, 5, 7, 4, torch.float32, device, seed=9)
    read_only = ops.memory_step(query, items, with_losses=False, update="none")
    assert read_only.items is None and read_only.compactness is None and read_only.separateness is None
    assert torch.equal(read_only.read, ops.memory_read(query, items))
    no_update = ops.memory_step(query, items, update="none")
    assert no_update.items is None and torch.equal(no_update.compactness, ops.memory_losses(query, items)[0])
    no_losses = ops.memory_step(query, items, with_losses=False)
    assert no_losses.compactness is None
    torch.testing.assert_close(no_losses.items, ops.memory_update(query, items), atol=1e-6, rtol=1e-6)
    # Losses only, the read unused: its gradient arrives as None and is taken as zero.
    q = query.clone().requires_grad_(True)
    step = ops.memory_step(q, items, update="none")
    (step.compactness + step.separateness).backward()
    q2 = query.clone().requires_grad_(True)
    sum(ops.memory_losses(q2, items)).backward()
    torch.testing.assert_close(q.grad, q2.grad, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_stats_with_one_item_and_no_losses(device):
    """M = 1 is valid without the losses (they need a second item)."""
    query, items = make_inputs(1, 4, 3, 3, 1, torch.float64, device, seed=2)
    step = ops.memory_step(query, items, with_losses=False)
    torch.testing.assert_close(step.items, reference_step(query, items, with_losses=False).items)


def test_torch_compile_fullgraph_matches_eager():
    query, items = make_inputs(2, 8, 4, 4, 6, torch.float32, seed=13)

    def fn(q, p):
        step = ops.memory_step(q, p, grad_through_weights=True)
        return step.read.square().mean() + step.compactness + 0.1 * step.separateness, step.items

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    q1, q2 = query.clone().requires_grad_(True), query.clone().requires_grad_(True)
    loss_c, items_c = compiled(q1, items)
    loss_c.backward()
    loss_e, items_e = fn(q2, items)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(items_c, items_e)
    torch.testing.assert_close(q1.grad, q2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_fuzz_against_reference(device):
    rng = random.Random(4321)
    for _ in range(25):
        b, c, h, w, m = rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 13), rng.randint(1, 13), rng.randint(2, 33)
        dtype = rng.choice([torch.float64, torch.float32])
        query, items = make_inputs(b, c, h, w, m, dtype, device, seed=rng.randint(0, 10**6))
        if rng.random() < 0.5:  # non-contiguous query: channels-last or a strided slice
            query = query.contiguous(memory_format=torch.channels_last) if rng.random() < 0.5 else \
                torch.cat([query, query], dim=3)[..., ::2]
        kwargs = dict(grad_through_weights=rng.random() < 0.5, max_over_assigned=rng.random() < 0.5,
                      with_losses=rng.random() < 0.8, update=rng.choice(["items", "stats", "none"]))
        check_step_against_reference(query, items, loss_tol_factor=10, **kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_query_with_fp32_items(device, dtype):
    query32, items = make_inputs(2, 16, 4, 6, 8, torch.float32, device, seed=5)
    query = query32.to(dtype).requires_grad_(True)
    step = ops.memory_step(query, items, update="stats")
    assert step.read.dtype == dtype and step.compactness.dtype == dtype
    assert step.items.weighted_sum.dtype == torch.float32
    refd = reference_step(query.detach().float(), items, update="stats")
    torch.testing.assert_close(step.read.float(), refd.read, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(step.compactness.float(), refd.compactness, atol=TOL[dtype], rtol=TOL[dtype])
    torch.testing.assert_close(step.separateness.float(), refd.separateness, atol=TOL[dtype], rtol=TOL[dtype])
    (step.read.float().sum() + step.compactness + step.separateness).backward()
    assert query.grad.dtype == dtype and torch.isfinite(query.grad).all()


def test_bad_inputs_raise_clear_errors():
    query, items = make_inputs(1, 8, 3, 3, 4)
    with pytest.raises(ValueError, match="update must be one of"):
        ops.memory_step(query, items, update="new")
    with pytest.raises(ValueError, match="at least 2 memory items"):
        ops.memory_step(query, items[:1])
    with pytest.raises((ValueError, RuntimeError), match=r"\(B, C, H, W\)"):
        ops.memory_step(query[0], items)
    with pytest.raises((ValueError, RuntimeError), match=r"C = "):
        ops.memory_step(query, items[:, :4])
    with pytest.raises(TypeError, match="floating"):
        ops.memory_step(query.long(), items)
    with pytest.raises((ValueError, RuntimeError), match="at most 256"):
        ops.memory_step(query, F.normalize(torch.randn(257, 8), dim=1))
    top = torch.ops.mgid.memory_step(query, items, False, False, True, False)[5]
    assert top.dtype == torch.int32 and top.shape == (9, 2)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape"):
        torch.ops.mgid.memory_step_backward(torch.zeros(1, 8, 3, 3), torch.tensor(1.0), torch.tensor(1.0), query,
                                            items, top, False, True)
    with pytest.raises(RuntimeError, match=r"top must be the int32 \(N, 2\)"):
        torch.ops.mgid.memory_step_backward(torch.zeros(1, 16, 3, 3), torch.tensor(1.0), torch.tensor(1.0), query,
                                            items, top[:4], False, True)
    with pytest.raises(RuntimeError, match="at least 2 memory items"):
        torch.ops.mgid.memory_step(query, items[:1], False, False, True, True)


# ---- the model uses it --------------------------------------------------------------------------------

def _count_calls(monkeypatch, name):
    calls = []
    real = getattr(ops, name)

    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, name, counted)
    return calls


def test_memory_module_runs_one_step_per_training_forward(monkeypatch):
    """Training forward: one memory_step (no separate read, losses or update); inference: the read only."""
    module = MemoryModule(num_items=6, channels=8, generator=torch.Generator().manual_seed(0))
    query = torch.randn(2, 8, 5, 5)
    counts = {n: _count_calls(monkeypatch, n) for n in ("memory_step", "memory_read", "memory_losses",
                                                        "memory_update", "memory_update_stats")}
    before = module.items.clone()
    out = module(query, update=True)
    assert len(counts["memory_step"]) == 1 and not any(counts[n] for n in counts if n != "memory_step")
    assert out.compactness is not None and not torch.equal(module.items, before)
    module(query, update=False)
    assert len(counts["memory_step"]) == 1 and len(counts["memory_read"]) == 1


def test_memory_module_step_equals_the_separate_ops():
    module = MemoryModule(num_items=6, channels=8, update_max_over_assigned=True,
                          generator=torch.Generator().manual_seed(1))
    query = torch.randn(2, 8, 7, 6, dtype=torch.float32)
    items = module.items.clone()
    out = module(query, update=True)
    assert torch.equal(out.features, ops.memory_read(query, items))
    compactness, separateness = ops.memory_losses(query, items)
    assert torch.equal(out.compactness, compactness) and torch.equal(out.separateness, separateness)
    torch.testing.assert_close(module.items, ops.memory_update(query, items, True), atol=1e-6, rtol=1e-6)


def test_memory_module_hands_the_stats_to_a_reducer():
    """What distributed training plugs in: the reducer gets this process's statistics and returns the items."""
    module = MemoryModule(num_items=5, channels=4, generator=torch.Generator().manual_seed(2))
    query = torch.randn(1, 4, 3, 3)
    seen = []

    def reducer(stats, items):
        seen.append(stats)
        return ops.finish_update(items, stats) * 0 + 1

    module.stats_reducer = reducer
    items = module.items.clone()
    module(query, update=True)
    (stats,) = seen
    col_max, weighted_sum = ops.memory_update_stats(query, items)
    assert torch.equal(stats.col_max, col_max) and torch.equal(stats.weighted_sum, weighted_sum)
    assert torch.equal(module.items, torch.ones(5, 4))
