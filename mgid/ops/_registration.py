"""Fake (meta) implementations and autograd formulas of the compiled ``torch.ops.mgid`` operators.

The operators and their CPU/CUDA kernels are registered in C++ (``csrc/``); this module adds what
``torch.compile`` needs to trace them (fake implementations: shapes and dtypes only) and their
backward passes, which are themselves compiled operators. Imported once, when the extension loads.
Op by op: the fake of the forward op, the fake of its backward op and, for a differentiable op, the
autograd formula that calls the backward op.
"""
from __future__ import annotations

import torch

_ACC = {torch.float64: torch.float64}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return _ACC.get(dtype, torch.float32)


# ---- memory_read ---------------------------------------------------------------------------------

@torch.library.register_fake("mgid::memory_read")
def _(query, items, grad_through_weights=False):
    b, c, h, w = query.shape
    return query.new_empty((b, 2 * c, h, w))


@torch.library.register_fake("mgid::memory_read_backward")
def _(grad_out, query, items, grad_through_weights):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def _read_setup(ctx, inputs, output):
    query, items, grad_through_weights = inputs
    ctx.save_for_backward(query, items)
    ctx.grad_through_weights = grad_through_weights


def _read_backward(ctx, grad_out):
    query, items = ctx.saved_tensors
    grad_query = None
    if ctx.needs_input_grad[0]:
        grad_query = torch.ops.mgid.memory_read_backward(grad_out, query, items, ctx.grad_through_weights)
    return grad_query, None, None


torch.library.register_autograd("mgid::memory_read", _read_backward, setup_context=_read_setup)


# ---- memory_update_stats, memory_update (no gradient) --------------------------------------------

@torch.library.register_fake("mgid::memory_update_stats")
def _(query, items, max_over_assigned=False):
    acc = _acc_dtype(query.dtype)
    return items.new_empty((items.shape[0],), dtype=acc), items.new_empty(items.shape, dtype=acc)


@torch.library.register_fake("mgid::memory_update")
def _(query, items, max_over_assigned=False):
    return items.new_empty(items.shape)


# ---- memory_losses -------------------------------------------------------------------------------

@torch.library.register_fake("mgid::memory_losses")
def _(query, items):
    return query.new_empty(()), query.new_empty(())


@torch.library.register_fake("mgid::memory_losses_backward")
def _(grad_compactness, grad_separateness, query, items):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def _losses_setup(ctx, inputs, output):
    query, items = inputs
    ctx.save_for_backward(query, items)


def _losses_backward(ctx, grad_compactness, grad_separateness):
    query, items = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None
    # An unused output arrives as None (or zeros): a zero weight removes its term.
    zero = query.new_zeros((), dtype=_acc_dtype(query.dtype))
    gc = zero if grad_compactness is None else grad_compactness
    gs = zero if grad_separateness is None else grad_separateness
    return torch.ops.mgid.memory_losses_backward(gc, gs, query, items), None


torch.library.register_autograd("mgid::memory_losses", _losses_backward, setup_context=_losses_setup)


# ---- memory_step ---------------------------------------------------------------------------------

@torch.library.register_fake("mgid::memory_step")
def _(query, items, grad_through_weights=False, max_over_assigned=False, with_losses=True, with_update=True):
    b, c, h, w = query.shape
    acc = _acc_dtype(query.dtype)
    return (query.new_empty((b, 2 * c, h, w)), query.new_empty(()), query.new_empty(()),
            items.new_empty((items.shape[0],), dtype=acc), items.new_empty(items.shape, dtype=acc),
            query.new_empty((b * h * w if with_losses else 0, 2), dtype=torch.int32))


@torch.library.register_fake("mgid::memory_step_backward")
def _(grad_read, grad_compactness, grad_separateness, query, items, top, grad_through_weights, with_losses):
    return torch.empty_like(query, memory_format=torch.contiguous_format)


def _step_setup(ctx, inputs, output):
    query, items, grad_through_weights, _, with_losses, _ = inputs
    # The two nearest items of every query (output 5): the backward of the losses needs no scores.
    ctx.save_for_backward(query, items, output[5])
    ctx.grad_through_weights = grad_through_weights
    ctx.with_losses = with_losses
    ctx.mark_non_differentiable(output[3], output[4], output[5])  # update statistics, nearest items


def _step_backward(ctx, grad_read, grad_compactness, grad_separateness, _grad_col_max, _grad_sum, _grad_top):
    query, items, top = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    b, c, h, w = query.shape
    if grad_read is None:  # only the losses were used
        grad_read = query.new_zeros((b, 2 * c, h, w))
    zero = query.new_zeros((), dtype=_acc_dtype(query.dtype))
    gc = zero if grad_compactness is None else grad_compactness
    gs = zero if grad_separateness is None else grad_separateness
    grad_query = torch.ops.mgid.memory_step_backward(grad_read, gc, gs, query, items, top, ctx.grad_through_weights,
                                                     ctx.with_losses)
    return grad_query, None, None, None, None, None


torch.library.register_autograd("mgid::memory_step", _step_backward, setup_context=_step_setup)


# ---- feature_covariance --------------------------------------------------------------------------

# feature_covariance and bsw_mask are CompositeExplicitAutograd (ATen calls + the kernels below),
# which has no meta kernel of its own for every call it makes; give them fakes too.
@torch.library.register_fake("mgid::feature_covariance")
def _(features):
    b, c = features.shape[:2]
    return features.new_empty((b, c, c))


def _covariance_setup(ctx, inputs, output):
    (features,) = inputs
    ctx.save_for_backward(features)


def _covariance_backward(ctx, grad_cov):
    (features,) = ctx.saved_tensors
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    # d/df of f f^T / (HW - 1): (G + G^T) f / (HW - 1); one batched GEMM.
    grad = torch.bmm((grad_cov + grad_cov.transpose(1, 2)).to(f.dtype), f) / (h * w - 1)
    return grad.reshape(b, c, h, w)


torch.library.register_autograd("mgid::feature_covariance", _covariance_backward, setup_context=_covariance_setup)


# ---- bsw_threshold, bsw_mask (no gradient) -------------------------------------------------------

@torch.library.register_fake("mgid::bsw_threshold")
def _(values, k):
    return values.new_empty((), dtype=torch.float64)


@torch.library.register_fake("mgid::bsw_mask")
def _(cov1, cov2, k=50):
    return cov1.new_empty(cov1.shape, dtype=torch.bool)


# ---- bsw_loss_masked -----------------------------------------------------------------------------

@torch.library.register_fake("mgid::bsw_loss_masked")
def _(cov1, cov2, mask):
    return cov1.new_empty(()), cov1.new_empty((), dtype=_acc_dtype(cov1.dtype))


@torch.library.register_fake("mgid::bsw_loss_masked_backward")
def _(grad, cov1, cov2, mask, count):
    return torch.empty_like(cov1, memory_format=torch.contiguous_format), torch.empty_like(
        cov2, memory_format=torch.contiguous_format)


def _bsw_setup(ctx, inputs, output):
    cov1, cov2, mask = inputs
    _, count = output
    ctx.save_for_backward(cov1, cov2, mask, count)


def _bsw_backward(ctx, grad_loss, grad_count):
    cov1, cov2, mask, count = ctx.saved_tensors
    if grad_loss is None:
        return None, None, None
    g1, g2 = torch.ops.mgid.bsw_loss_masked_backward(grad_loss, cov1, cov2, mask, count)
    return g1, g2, None


torch.library.register_autograd("mgid::bsw_loss_masked", _bsw_backward, setup_context=_bsw_setup)
