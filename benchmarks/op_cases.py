"""The op cases shared by the op-family benchmarks (`bench_memory`, `bench_whitening`; run by `bench_ops`).

`Shape` and `SHAPES` (the benchmark shapes: training batch, 1K and 4K inference, MNAD's large case), `Case` (one
(shape, op, pass) row and its implementations), the callables' builders `make_fwd`, `make_fwd_bwd` and
`in_reference_mode`, and `maxdiff` / `find_row` for the checks and verdicts read from a result.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

import mgid.ops as ops


@dataclasses.dataclass(frozen=True)
class Shape:
    """A benchmark shape: query (B, C, H, W) at 1/8 resolution, M memory items."""

    name: str
    b: int
    c: int
    h: int
    w: int
    m: int
    note: str

    @property
    def n(self) -> int:
        """Number of queries N = B*H*W."""
        return self.b * self.h * self.w

    def describe(self) -> str:
        return f"B{self.b} C{self.c} {self.h}x{self.w} M{self.m} (N {self.n:,})"


SHAPES: dict[str, Shape] = {
    "train": Shape("train", 8, 64, 32, 32, 20, "MGID training: batch 8 of 256x256 crops"),
    "infer1k": Shape("infer1k", 1, 64, 128, 128, 20, "MGID inference at 1024x1024"),
    "infer4k": Shape("infer4k", 1, 64, 270, 480, 20, "MGID inference at 3840x2160 (4K UHD)"),
    "mnad_large": Shape("mnad_large", 1, 512, 256, 256, 20, "MNAD's large case: N 65,536, C 512"),
}

Impl = Callable[[], Any] | str  # a callable to time, or the reason it is skipped


@dataclasses.dataclass
class Case:
    """One (shape, op, pass) row: its implementations and the bytes an ideal fused op moves."""

    shape: str
    op: str
    pass_: str  # "fwd" or "fwd+bwd"
    impls: dict[str, Impl]
    bytes_ideal: int | None
    bytes_note: str


def in_reference_mode(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so it runs inside ``mgid.ops.use_reference()``."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with ops.use_reference():
            return fn(*args, **kwargs)
    return wrapped


def make_fwd(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """``fn(*args)`` under ``torch.no_grad()``."""
    def run() -> Any:
        with torch.no_grad():
            return fn(*args)
    return run


def make_fwd_bwd(fn: Callable[..., Any], leaf: torch.Tensor, others: Sequence[Any],
                 targets: Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]) -> Callable[[], Any]:
    """fwd+bwd of ``fn(leaf, *others)``: backward from ``targets(result)`` = (outputs, their grads)."""
    def run() -> Any:
        leaf.grad = None
        result = fn(leaf, *others)
        outs, grads = targets(result)
        torch.autograd.backward(outs, grads)
        return result
    return run


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64."""
    return float((a.detach().double() - b.detach().double()).abs().max())


def find_row(result: dict[str, Any], shape: str, op: str, pass_: str, impl: str) -> dict[str, Any] | None:
    """The timed row of ``impl`` in the case (shape, op, pass) of an op report, or None."""
    for case in result["cases"]:
        if case["shape"] == shape and case["op"] == op and case["pass"] == pass_:
            for r in case["rows"]:
                if r["impl"] == impl and r["status"] == "ok":
                    return r
    return None
