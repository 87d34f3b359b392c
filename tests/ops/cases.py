"""The inputs of every compiled op (``torch.ops.mgid.*``), forward and backward: one builder per op.

In the style of pytorch/extension-cpp's ``sample_inputs``: `OP_CASES` maps each operator's name to
an `OpCase`, whose ``make_args(device, dtype, generator, size, *flags)`` returns the op's tensor
arguments; ``flags`` are its trailing non-tensor arguments, one tuple per variant (`OpCase.variants`).
A `Sample` is one variant of one op. opcheck, float64 gradcheck, the thread-count check
(tests/ops/test_ops_fused.py), the two CPU copies (tests/ops/test_cpu_isa.py), CPU against CUDA, the GPU's
repeatability and stream checks (tests/ops/test_ops_cuda.py) and the input errors of the public ops
(tests/ops/test_ops_errors.py) all take their inputs here: an op added to the extension is added once, here.

Values are drawn in float64 on the CPU from the generator, then cast and moved, so one seed gives the same
values on every device. Memory items are kept in the accumulation dtype (float32, float64 for float64
queries), as the model keeps them under mixed precision.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import mgid.ops as ops
from mgid.ops import reference

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Size:
    """The shapes of one test's inputs: query and features (B, C, H, W), ``items`` memory items (M), of which
    the last ``lonely`` point away from every query (no query is assigned to them)."""

    shape: tuple[int, int, int, int]
    items: int
    lonely: int = 0


@dataclass(frozen=True)
class OpCase:
    """One compiled op and how to call it.

    make_args: (device, dtype, generator, size, *flags) -> the op's tensor arguments (they come first in
        every schema; the flags follow them).
    dtypes: the input dtypes its kernels are instantiated for.
    variants: the flag tuples the tests run.
    flag_names: a short name of each flag, for test ids.
    grad_inputs: positions of the arguments its autograd formula differentiates (none: no autograd formula).
    family: ``"memory"`` (csrc/memory_*: two CPU copies, one arithmetic on CPU and GPU) or ``"whitening"``.
    public: the ``mgid.ops`` function that runs it, called with the op's arguments (memory forward ops).
    gradcheck_outputs: (args, outputs) -> the outputs that have their true derivative (default: all).
    uses_blas: it runs GEMMs of the BLAS library, whose summation order may change with the stream or
        the thread count.
    """

    name: str
    make_args: Callable[..., tuple]
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES
    variants: tuple[tuple, ...] = ((),)
    flag_names: tuple[str, ...] = ()
    grad_inputs: tuple[int, ...] = ()
    family: str = "memory"
    public: Callable | None = None
    gradcheck_outputs: Callable | None = None
    uses_blas: bool = False

    @property
    def op(self):
        """``torch.ops.mgid.<name>``, looked up when used (the extension may not be built)."""
        return getattr(torch.ops.mgid, self.name)

    def samples(self) -> list[Sample]:
        return [Sample(self, flags) for flags in self.variants]


@dataclass(frozen=True)
class Sample:
    """One variant of one op: its case and its trailing arguments."""

    case: OpCase
    flags: tuple

    def __str__(self) -> str:
        parts = [n if v is True else f"{n}{v}" for n, v in zip(self.case.flag_names, self.flags) if v is not False]
        return "-".join([self.case.name, *parts])

    def args(self, device, dtype: torch.dtype, size: Size, seed: int, requires_grad: bool = False) -> tuple:
        """The op's arguments, drawn from ``seed``; ``requires_grad`` marks the differentiable ones."""
        return self._args(device, dtype, size, torch.Generator().manual_seed(seed), requires_grad)

    def _args(self, device, dtype, size, g, requires_grad) -> tuple:
        tensors = self.case.make_args(device, dtype, g, size, *self.flags)
        if requires_grad:
            for i in self.case.grad_inputs:
                tensors[i].requires_grad_(True)
        return (*tensors, *self.flags)

    def run(self, device, dtype: torch.dtype, size: Size, seed: int, requires_grad: bool = True) -> list[torch.Tensor]:
        """The op's outputs and, with ``requires_grad`` for an op with an autograd formula, the gradients of
        its differentiable arguments under random upstream gradients (all drawn from ``seed``); detached."""
        g = torch.Generator().manual_seed(seed)
        args = self._args(device, dtype, size, g, requires_grad)
        out = self.case.op(*args)
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        result = [t.detach() for t in outputs]
        inputs = [args[i] for i in self.case.grad_inputs if args[i].requires_grad]
        if inputs:
            differentiable = [t for t in outputs if t.requires_grad]
            upstream = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in differentiable]
            result += [t.detach() for t in torch.autograd.grad(differentiable, inputs, upstream)]
        return result

    def gradcheck_inputs(self, args: tuple) -> tuple[Callable, tuple]:
        """(function of the differentiable arguments, those arguments) for ``torch.autograd.gradcheck``."""
        positions = self.case.grad_inputs

        def fn(*diff):
            full = list(args)
            for i, t in zip(positions, diff):
                full[i] = t
            out = self.case.op(*full)
            return out if self.case.gradcheck_outputs is None else self.case.gradcheck_outputs(full, out)

        return fn, tuple(args[i] for i in positions)

    def call_public(self, *tensors):
        """The public ``mgid.ops`` function of the op on ``tensors`` with this variant's flags."""
        return self.case.public(*tensors, *self.flags)


# ---- builders ----------------------------------------------------------------------------------

def _randn(g: torch.Generator, shape, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_and_items(g: torch.Generator, shape, m: int, dtype, items_dtype, device,
                    lonely: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """query (B, C, H, W) in ``dtype`` and unit items (M, C) in ``items_dtype``, drawn in that order in float64.
    ``lonely``: the last ``lonely`` items point away from every query (a large negative channel 0 where the
    queries' is large and positive), so no query is ever assigned to them."""
    query = torch.randn(*shape, generator=g, dtype=torch.float64)
    items = torch.randn(m, shape[1], generator=g, dtype=torch.float64)
    if lonely:
        query[:, 0] = query[:, 0].abs() + 3
        items[: m - lonely, 0] += 4
        items[m - lonely:, 0] -= 8
    return query.to(device=device, dtype=dtype), F.normalize(items, dim=1).to(device=device, dtype=items_dtype)


def make_inputs(b, c, h, w, m, dtype=torch.float32, device="cpu", seed=0, items_dtype=None):
    """query (B, C, H, W) and unit items (M, C) from ``seed``, items in ``items_dtype`` (default ``dtype``)."""
    return query_and_items(torch.Generator().manual_seed(seed), (b, c, h, w), m, dtype, items_dtype or dtype, device)


def covariance_pair(g: torch.Generator, shape, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames' covariances (B, C, C), float64 on the CPU: instance-normalised features f1 and
    f2 = IN(f1 + 0.3 noise) of shape (B, C, H, W) with log-normal channel scales. With ``ties`` a random
    symmetric third of the entries of cov2 equals cov1's (variance exactly 0)."""
    b, c = shape[:2]
    scale = torch.exp(0.5 * torch.randn(b, c, 1, 1, generator=g, dtype=torch.float64))
    f1 = scale * F.instance_norm(torch.randn(*shape, generator=g, dtype=torch.float64))
    f2 = scale * F.instance_norm(f1 / scale + 0.3 * torch.randn(*shape, generator=g, dtype=torch.float64))
    cov1, cov2 = reference.feature_covariance(f1), reference.feature_covariance(f2)
    if ties:
        same = torch.rand(b, c, c, generator=g) < 1 / 3
        cov2 = torch.where(same | same.transpose(1, 2), cov1, cov2)
    return cov1, cov2


def _memory(device, dtype, g, size, *flags):
    """memory_read, memory_update(_stats), memory_losses, memory_step: (query, items)."""
    return query_and_items(g, size.shape, size.items, dtype, _acc(dtype), device, size.lonely)


def _read_grad(g, size, dtype, device) -> torch.Tensor:
    b, c, h, w = size.shape
    return _randn(g, (b, 2 * c, h, w), dtype, device)


def _read_backward(device, dtype, g, size, grad_through_weights):
    return (_read_grad(g, size, dtype, device), *_memory(device, dtype, g, size))


def _losses_backward(device, dtype, g, size):
    grads = _randn(g, (), dtype, device), _randn(g, (), dtype, device)
    return (*grads, *_memory(device, dtype, g, size))


def _step_backward(device, dtype, g, size, grad_through_weights, with_losses):
    grad_read, gc, gs, query, items = (_read_grad(g, size, dtype, "cpu"), *_losses_backward("cpu", dtype, g, size))
    # The two nearest items of every query (memory_step's output 5), found on the host; none without the losses.
    scores = reference.normalized_queries(query.double()) @ items.double().t()
    top = (scores.topk(2, dim=1).indices if with_losses else torch.empty(0, 2, dtype=torch.int64)).int()
    return tuple(t.to(device) for t in (grad_read, gc, gs, query, items, top))


def _features(device, dtype, g, size):
    return (_randn(g, size.shape, dtype, device),)


def _covariances(device, dtype, g, size, *flags):
    return tuple(t.to(device=device, dtype=dtype) for t in covariance_pair(g, size.shape, ties=True))


def _threshold(device, dtype, g, size, k):
    """The BSW mask's k-means values: the cross-frame variances of two covariances (B * C * C values)."""
    return (reference.cross_frame_variance(*covariance_pair(g, size.shape, ties=True)).to(device=device, dtype=dtype),)


def _loss_masked(device, dtype, g, size):
    cov1, cov2 = _covariances(device, dtype, g, size)
    return cov1, cov2, (torch.rand(cov1.shape, generator=g) < 0.3).to(device)


def _loss_masked_backward(device, dtype, g, size):
    cov1, cov2, mask = _loss_masked(device, dtype, g, size)
    return _randn(g, (), dtype, device), cov1, cov2, mask, mask.sum().to(_acc(dtype))


def _read_q_hat_half(args, out):
    # The public code's read half is detached by design (not its true derivative): the q_hat half only.
    return out if args[2] else out[:, : args[0].shape[1]]


def _step_differentiated(args, out):
    losses = out[1:3] if args[4] else ()
    return (_read_q_hat_half(args, out[0]), *losses)


def _step_public(query, items, grad_through_weights, max_over_assigned, with_losses, with_update):
    return ops.memory_step(query, items, grad_through_weights=grad_through_weights,
                           max_over_assigned=max_over_assigned, with_losses=with_losses,
                           update="items" if with_update else "none")


_BOTH = ((False,), (True,))

OP_CASES: dict[str, OpCase] = {case.name: case for case in (
    OpCase("memory_read", _memory, variants=_BOTH, flag_names=("gtw",), grad_inputs=(0,), public=ops.memory_read,
           gradcheck_outputs=_read_q_hat_half),
    OpCase("memory_read_backward", _read_backward, variants=_BOTH, flag_names=("gtw",)),
    OpCase("memory_update_stats", _memory, variants=_BOTH, flag_names=("moa",), public=ops.memory_update_stats),
    OpCase("memory_update", _memory, variants=_BOTH, flag_names=("moa",), public=ops.memory_update),
    OpCase("memory_losses", _memory, grad_inputs=(0,), public=ops.memory_losses),
    OpCase("memory_losses_backward", _losses_backward),
    OpCase("memory_step", _memory,
           variants=((False, False, True, True), (True, True, True, True), (False, False, False, True),
                     (True, False, True, False)),
           flag_names=("gtw", "moa", "losses", "update"), grad_inputs=(0,), public=_step_public,
           gradcheck_outputs=_step_differentiated),
    OpCase("memory_step_backward", _step_backward, variants=((False, True), (True, True), (True, False)),
           flag_names=("gtw", "losses")),
    OpCase("feature_covariance", _features, grad_inputs=(0,), family="whitening", uses_blas=True),
    OpCase("bsw_threshold", _threshold, variants=((5,), (50,)), flag_names=("k",), family="whitening"),
    OpCase("bsw_mask", _covariances, variants=((5,), (50,)), flag_names=("k",), family="whitening"),
    OpCase("bsw_loss_masked", _loss_masked, grad_inputs=(0, 1), family="whitening",
           gradcheck_outputs=lambda args, out: out[0]),  # the count is piecewise constant
    OpCase("bsw_loss_masked_backward", _loss_masked_backward, family="whitening"),
)}


def samples(family: str | None = None, *, differentiable: bool | None = None, blas: bool | None = None) -> list[Sample]:
    """Every variant of every op, optionally of one family, with(out) an autograd formula, with(out) BLAS GEMMs."""
    return [s for case in OP_CASES.values() for s in case.samples()
            if (family is None or case.family == family)
            and (differentiable is None or bool(case.grad_inputs) == differentiable)
            and (blas is None or case.uses_blas == blas)]
