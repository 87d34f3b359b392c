"""Input errors of the public ops (``mgid.ops.*``) and the NaN policy.

Every public op validates metadata (rank, dtype, device, emptiness, shapes, k, method) with the
shared validators of ``mgid/ops/_checks.py`` before dispatching, so the same clear error comes out
of the reference and of the compiled kernels: the exception type is the one ``_checks`` raises
(ValueError for shapes/devices/values of arguments, TypeError for dtypes and non-tensors) and the
message names the offending argument. Each case runs on both paths: the default dispatch (the
compiled kernels where built) and ``use_reference()``.

NaN policy (``_checks.py``): values are never inspected (that would sync the host on CUDA); a NaN
propagates to the outputs it touches and no further.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

import mgid.ops as ops
from tests.ops.cases import samples

B, C, H, W, M = 2, 5, 3, 4, 4


@pytest.fixture(params=["default", "reference"])
def path(request):
    ctx = ops.use_reference() if request.param == "reference" else contextlib.nullcontext()
    with ctx:
        yield request.param


def _query(*shape, dtype=torch.float32, device="cpu"):
    shape = shape or (B, C, H, W)
    g = torch.Generator().manual_seed(0)
    return torch.randn(*shape, generator=g).to(dtype).to(device)


def _items(*shape, dtype=torch.float32, device="cpu"):
    shape = shape or (M, C)
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1).to(dtype).to(device)


def _cov(*shape, dtype=torch.float32, device="cpu", seed=2):
    shape = shape or (B, C, C)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(device)


# Every variant of every public memory op (tests/ops/cases.py), called as f(query, items).
MEMORY_OPS = {str(s): s.call_public for s in samples("memory") if s.case.public is not None}


@pytest.fixture(params=sorted(MEMORY_OPS))
def memory_op(request):
    return MEMORY_OPS[request.param]


# ---------------------------------------------------------------------------------------------
# Positive controls: the valid inputs the error cases start from do not raise.
# ---------------------------------------------------------------------------------------------

def test_valid_inputs_do_not_raise(path, memory_op):
    memory_op(_query(), _items())
    memory_op(_query(dtype=torch.float64), _items(dtype=torch.float64))


def test_valid_whitening_inputs_do_not_raise(path):
    f = _query()
    ops.feature_covariance(f)
    ops.bsw_mask(_cov(), _cov(seed=3), k=1)
    ops.bsw_mask(_cov(), _cov(seed=3), k=5, method="exact")
    ops.bsw_loss(f, _query() * 2, k=3)
    ops.feature_covariance(_query(B, C, 1, 2))  # H*W = 2 is the minimum


# ---------------------------------------------------------------------------------------------
# Memory ops
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, C, H * W), (B, C, H, W, 1), (C,)])
def test_query_wrong_rank(path, memory_op, shape):
    with pytest.raises(ValueError, match=r"query.*\(B, C, H, W\)"):
        memory_op(_query(*shape), _items())


@pytest.mark.parametrize("shape", [(M, C, 1), (C,)])
def test_items_wrong_rank(path, memory_op, shape):
    with pytest.raises(ValueError, match=r"items.*\(M, C\)"):
        memory_op(_query(), _items(*shape))


def test_mismatched_channels(path, memory_op):
    with pytest.raises(ValueError, match=r"items.*C = query\.shape\[1\] = 5"):
        memory_op(_query(), _items(M, C + 1))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_query_integer_dtype(path, memory_op, dtype):
    with pytest.raises(TypeError, match=r"query.*floating"):
        memory_op(torch.ones(B, C, H, W, dtype=dtype), _items())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_items_integer_dtype(path, memory_op, dtype):
    with pytest.raises(TypeError, match=r"items.*floating"):
        memory_op(_query(), torch.ones(M, C, dtype=dtype))


def test_query_not_a_tensor(path, memory_op):
    with pytest.raises(TypeError, match=r"query.*torch\.Tensor"):
        memory_op(_query().tolist(), _items())


@pytest.mark.parametrize("query_device,items_device", [("meta", "cpu"), ("cpu", "meta")])
def test_different_devices(path, memory_op, query_device, items_device):
    """The meta device stands in for a GPU: the check must fire before any computation."""
    with pytest.raises(ValueError, match=r"one device.*query on (meta|cpu).*items on (meta|cpu)"):
        memory_op(_query(device=query_device), _items(device=items_device))


@pytest.mark.parametrize("shape", [(0, C, H, W), (B, C, 0, W), (B, C, H, 0)])
def test_empty_query(path, memory_op, shape):
    with pytest.raises(ValueError, match=r"query.*empty"):
        memory_op(torch.zeros(shape), _items())


def test_empty_items(path, memory_op):
    with pytest.raises(ValueError, match=r"items.*empty"):
        memory_op(_query(), torch.zeros(0, C))


# ---------------------------------------------------------------------------------------------
# Covariance
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(B, C, H * W), (B, C, H, W, 1)])
def test_features_wrong_rank(path, shape):
    with pytest.raises(ValueError, match=r"features.*\(B, C, H, W\)"):
        ops.feature_covariance(_query(*shape))


def test_features_integer_dtype(path):
    with pytest.raises(TypeError, match=r"features.*floating"):
        ops.feature_covariance(torch.ones(B, C, H, W, dtype=torch.int64))


@pytest.mark.parametrize("shape", [(0, C, H, W), (B, 0, H, W), (B, C, 0, W)])
def test_features_empty(path, shape):
    with pytest.raises(ValueError, match=r"features.*empty"):
        ops.feature_covariance(torch.zeros(shape))


@pytest.mark.parametrize("hw", [(1, 1)])
def test_features_single_pixel(path, hw):
    """A covariance divides by H*W - 1: one pixel must be refused, not give inf/NaN."""
    with pytest.raises(ValueError, match=r"features.*H\*W >= 2"):
        ops.feature_covariance(_query(B, C, *hw))


# ---------------------------------------------------------------------------------------------
# Mask
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape2", [(B, C + 1, C + 1), (B + 1, C, C)])
def test_mismatched_cov_shapes(path, shape2):
    with pytest.raises(ValueError, match=r"cov1 and cov2.*same shape"):
        ops.bsw_mask(_cov(), _cov(*shape2), k=3)


def test_non_square_cov(path):
    with pytest.raises(ValueError, match=r"cov1.*square"):
        ops.bsw_mask(_cov(B, C, C + 1), _cov(B, C, C + 1), k=3)


@pytest.mark.parametrize("which", [1, 2])
def test_cov_wrong_rank(path, which):
    args = [_cov(), _cov()]
    args[which - 1] = _cov(C, C)
    with pytest.raises(ValueError, match=rf"cov{which}.*\(B, C, C\)"):
        ops.bsw_mask(*args, k=3)


@pytest.mark.parametrize("which", [1, 2])
def test_cov_integer_dtype(path, which):
    args = [_cov(), _cov()]
    args[which - 1] = torch.ones(B, C, C, dtype=torch.int64)
    with pytest.raises(TypeError, match=rf"cov{which}.*floating"):
        ops.bsw_mask(*args, k=3)


def test_cov_different_devices(path):
    with pytest.raises(ValueError, match=r"one device.*cov1 on cpu.*cov2 on meta"):
        ops.bsw_mask(_cov(), _cov(device="meta"), k=3)


def test_cov_empty(path):
    with pytest.raises(ValueError, match=r"cov1.*empty"):
        ops.bsw_mask(torch.zeros(0, C, C), torch.zeros(0, C, C), k=3)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "50"])
def test_bad_k(path, k):
    with pytest.raises(ValueError, match=r"\bk\b.*positive int"):
        ops.bsw_mask(_cov(), _cov(seed=3), k=k)


@pytest.mark.parametrize("method", ["kmeans", "", "Lloyd"])
def test_unknown_method(path, method):
    with pytest.raises(ValueError, match=r"method.*'fast'.*'exact'"):
        ops.bsw_mask(_cov(), _cov(seed=3), k=3, method=method)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def test_bsw_loss_mismatched_features(path):
    with pytest.raises(ValueError, match=r"features1 and features2.*same shape"):
        ops.bsw_loss(_query(), _query(B, C + 1, H, W), k=3)


@pytest.mark.parametrize("which", [1, 2])
def test_bsw_loss_wrong_rank(path, which):
    args = [_query(), _query()]
    args[which - 1] = _query(B, C, H * W)
    with pytest.raises(ValueError, match=rf"features{which}.*\(B, C, H, W\)"):
        ops.bsw_loss(*args, k=3)


@pytest.mark.parametrize("which", [1, 2])
def test_bsw_loss_integer_dtype(path, which):
    args = [_query(), _query()]
    args[which - 1] = torch.ones(B, C, H, W, dtype=torch.int32)
    with pytest.raises(TypeError, match=rf"features{which}.*floating"):
        ops.bsw_loss(*args, k=3)


def test_bsw_loss_different_devices(path):
    with pytest.raises(ValueError, match=r"one device.*features1 on meta.*features2 on cpu"):
        ops.bsw_loss(_query(device="meta"), _query(), k=3)


def test_bsw_loss_empty(path):
    with pytest.raises(ValueError, match=r"features1.*empty"):
        ops.bsw_loss(torch.zeros(0, C, H, W), torch.zeros(0, C, H, W), k=3)


def test_bsw_loss_single_pixel(path):
    with pytest.raises(ValueError, match=r"features.*H\*W >= 2"):
        ops.bsw_loss(_query(B, C, 1, 1), _query(B, C, 1, 1), k=3)


@pytest.mark.parametrize("k", [0, -3])
def test_bsw_loss_bad_k(path, k):
    with pytest.raises(ValueError, match=r"\bk\b.*positive int"):
        ops.bsw_loss(_query(), _query() * 2, k=k)


def test_bsw_loss_unknown_method(path):
    with pytest.raises(ValueError, match=r"method.*'fast'.*'exact'"):
        ops.bsw_loss(_query(), _query() * 2, k=3, method="optimal")


# ---------------------------------------------------------------------------------------------
# NaN policy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad_through_weights", [False, True])
def test_nan_at_one_pixel_stays_at_that_pixel(path, grad_through_weights):
    """Forward: that pixel's 2C outputs are NaN, every other pixel equals the NaN-free result.
    Backward: the gradient is finite at every other pixel (no cross-pixel reduction leaks it)."""
    q = _query(dtype=torch.float64)
    p = _items(dtype=torch.float64)
    clean = ops.memory_read(q, p, grad_through_weights=grad_through_weights)
    bad = q.clone()
    bad[1, 2, 1, 3] = float("nan")
    bad.requires_grad_()
    out = ops.memory_read(bad, p, grad_through_weights=grad_through_weights)
    assert torch.isnan(out[1, :, 1, 3]).all()
    others = torch.ones(B, H, W, dtype=torch.bool)
    others[1, 1, 3] = False
    got, want = out.detach().permute(0, 2, 3, 1)[others], clean.permute(0, 2, 3, 1)[others]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad(out.sum(), bad)
    assert torch.isfinite(grad.permute(0, 2, 3, 1)[others]).all()


def test_non_finite_values_are_not_rejected(path):
    """Values are not inspected: NaN/Inf inputs run (no exception, no host sync to look for them)."""
    q = _query()
    q[0, 0, 0, 0] = float("nan")
    q[1, 1, 1, 1] = float("inf")
    p = _items()
    for op in MEMORY_OPS.values():
        op(q, p)
    ops.feature_covariance(q)
    ops.bsw_loss(q, _query(), k=3)
