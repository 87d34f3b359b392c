#!/usr/bin/env python
"""Benchmark of mgid's memory and whitening ops against their peers.

Per shape, for the memory step (read + update + losses) and for read, update and losses alone,
forward and forward+backward, it times:

* ``fused``     the public ``mgid.ops`` functions (compiled kernels where built; the table says
                which path ran, from ``mgid.ops.op_path``);
* ``reference`` the same calls inside ``mgid.ops.use_reference()`` (eager, vectorised PyTorch);
* ``compile``   ``torch.compile`` of the reference functions (skipped, with the reason, where it
                fails or where ``--compile`` leaves it out);
* ``sdpa``      ``F.scaled_dot_product_attention`` as a read baseline (q_hat as query, items as keys
                and values, scale 1), plus the normalisation and the concat, so it returns what the
                read returns;
* ``loop``      the per-item Python loop of the public MNAD/MGID code (``benchmarks/public_loop.py``);

and, for the covariance + BSW loss at the training shape, the fused and reference ops against a
bare ``torch.bmm`` of the covariance's shape, (B, C, HW) x (B, HW, C) (and the GEMM floor of the
whole pass: both frames' bmm, forward and backward).

Timing: warm-up, then samples of one call each on CUDA (CUDA events, an L2 flush by writing a
256 MB buffer before each call) or of enough calls to last ~2 ms on the CPU; median and
inter-quartile range. Achieved GB/s = bytes an ideal fused op reads and writes (model in the
JSON) / median time. Speed-ups are peer time / fused time (> 1: fused is faster).

Writes ``bench_ops_<device kind>_<date>.md`` and ``.json`` under ``--out`` and prints the table.
On a machine without CUDA it times the CPU paths and says that the CUDA rows were not measured.

Run from the repository root: ``python benchmarks/bench_ops.py --quick``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import mgid.ops as ops  # noqa: E402
from mgid.ops import reference  # noqa: E402
import public_loop  # noqa: E402

# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


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
DEFAULT_SHAPES = {"cpu": "train,infer1k", "cuda": "train,infer1k,infer4k,mnad_large"}

# Columns of the table, in order: (key, header).
IMPLS: list[tuple[str, str]] = [
    ("fused", "fused"),
    ("reference", "reference (eager)"),
    ("compile", "torch.compile(ref)"),
    ("sdpa", "SDPA read"),
    ("loop", "per-item loop"),
    ("bmm", "bare bmm (fwd)"),
    ("bmm2_fb", "2x bmm fwd+bwd"),
]
IMPL_KEYS = [k for k, _ in IMPLS]

# Peak memory bandwidth (GB/s) used for the "% of peak" target when --peak-gbps is not given:
# OPS.md quotes ~3.0 TB/s for the H100; the H200's spec is 4.8 TB/s.
PEAK_GBPS_BY_NAME = [("H200", 4800.0), ("H100", 3000.0)]

L2_FLUSH_BYTES = 256 * 1024 * 1024
# Share of the machine's CPU time used by other processes above which a run is flagged as noisy.
BUSY_SHARE = 0.2


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Statistics of one measurement, seconds per call."""

    median_s: float
    p25_s: float
    p75_s: float
    min_s: float
    max_s: float
    samples: int
    calls_per_sample: int
    first_call_s: float  # the first warm-up call (includes torch.compile's compilation)

    @property
    def rel_iqr(self) -> float:
        """Inter-quartile range relative to the median."""
        return (self.p75_s - self.p25_s) / self.median_s if self.median_s > 0 else float("nan")


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of already sorted values."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class BenchTimer:
    """Times zero-argument callables with warm-up, an optional L2 flush (CUDA) and early stop.

    The callables of one case are timed *interleaved*: each round takes one sample of every
    callable in turn, so load from elsewhere on the machine (a shared CPU) hits all of them alike
    and their ratios stay meaningful.

    CUDA: one call per sample, bracketed by CUDA events after writing a 256 MB buffer (so every
    sample starts with a cold L2); the stream is synchronised after each sample. CPU: each sample
    runs enough calls to last ``cpu_sample_s`` and reports the mean per call. Sampling stops
    after ``repeats`` rounds or once ``max_seconds`` per callable have passed (after at least
    ``min_samples`` rounds).
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int, max_seconds: float,
                 flush_l2: bool, min_samples: int = 3, cpu_sample_s: float = 2e-3) -> None:
        self.device = device
        self.repeats = max(1, repeats)
        self.warmup = max(1, warmup)
        self.max_seconds = max_seconds
        self.min_samples = min(min_samples, self.repeats)
        self.cpu_sample_s = cpu_sample_s
        self.is_cuda = device.type == "cuda"
        self._l2: torch.Tensor | None = None
        if self.is_cuda and flush_l2:
            self._l2 = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def _sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def _warm(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """Warm-up calls; returns (first call's time, last call's time) in seconds."""
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        first = last = time.perf_counter() - t0
        for _ in range(self.warmup - 1):
            if last > self.max_seconds / 4:
                break
            t0 = time.perf_counter()
            fn()
            self._sync()
            last = time.perf_counter() - t0
        return first, last

    def _sample(self, fn: Callable[[], Any], calls: int) -> float:
        """One sample: seconds per call."""
        if self.is_cuda:
            if self._l2 is not None:
                self._l2.zero_()
            begin = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            return begin.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    def measure_many(self, fns: dict[str, Callable[[], Any]]) -> dict[str, Timing | Exception]:
        """Time every callable of ``fns``, interleaved; a callable that raises gets its exception."""
        results: dict[str, Timing | Exception] = {}
        first: dict[str, float] = {}
        calls: dict[str, int] = {}
        for name, fn in fns.items():
            try:
                first[name], last = self._warm(fn)
            except Exception as err:  # noqa: BLE001 - reported per implementation
                results[name] = err
                continue
            calls[name] = 1 if self.is_cuda else max(1, int(self.cpu_sample_s / max(last, 1e-9)))
        live = [n for n in fns if n in calls]
        samples: dict[str, list[float]] = {n: [] for n in live}
        start = time.perf_counter()
        budget = self.max_seconds * max(1, len(live))
        for round_ in range(self.repeats):
            for name in list(live):
                try:
                    samples[name].append(self._sample(fns[name], calls[name]))
                except Exception as err:  # noqa: BLE001
                    results[name] = err
                    live.remove(name)
            if round_ + 1 >= self.min_samples and time.perf_counter() - start > budget:
                break
        for name in live:
            s = sorted(samples[name])
            results[name] = Timing(median_s=_quantile(s, 0.5), p25_s=_quantile(s, 0.25),
                                   p75_s=_quantile(s, 0.75), min_s=s[0], max_s=s[-1], samples=len(s),
                                   calls_per_sample=calls[name], first_call_s=first[name])
        return results

    def __call__(self, fn: Callable[[], Any]) -> Timing:
        """Time one callable (raises what it raises)."""
        res = self.measure_many({"fn": fn})["fn"]
        if isinstance(res, Exception):
            raise res
        return res


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Synchronising CUDA calls made by one call of ``fn`` (``torch.cuda.set_sync_debug_mode``)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

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


def _first(x: Any) -> Any:
    """The op output proper when an op returns (out, extras)."""
    return x[0] if isinstance(x, (tuple, list)) else x


def in_reference_mode(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` so it runs inside ``mgid.ops.use_reference()``."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with ops.use_reference():
            return fn(*args, **kwargs)
    return wrapped


def step_public(q: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Memory step through the public API (``ops.memory_step``: read, update and both losses in one pass)."""
    step = ops.memory_step(q, items)
    return step.read, step.items, step.compactness, step.separateness


def step_separate(q: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Memory step as three separate public ops (read, update, losses): what the model ran before memory_step."""
    out = _first(ops.memory_read(q, items))
    new_items = ops.memory_update(q, items)
    compact, separate = ops.memory_losses(q, items)
    return out, new_items, compact, separate


def step_reference(q: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Memory step through ``mgid.ops.reference`` directly (what torch.compile compiles)."""
    out = reference.memory_read(q, items)
    new_items = reference.memory_update(q, items)
    compact, separate = reference.memory_losses(q, items)
    return out, new_items, compact, separate


def read_public(q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    return _first(ops.memory_read(q, items))


def sdpa_read(q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """The read as attention: SDPA(q_hat, P, P, scale=1), then concat[q_hat, r] in NCHW.

    q_hat enters the attention detached: the read half carries no gradient, as in the op's
    default (``grad_through_weights=False``).
    """
    b, c, h, w = q.shape
    q_hat = F.normalize(q, dim=1, eps=reference.NORM_EPS)
    # 4-D (batch 1, 1 head, N, C): the fused SDPA backends take only 4-D inputs.
    flat = q_hat.detach().permute(0, 2, 3, 1).reshape(1, 1, b * h * w, c)
    p = items.detach().to(q.dtype)[None, None]
    r = F.scaled_dot_product_attention(flat, p, p, scale=1.0)
    return torch.cat([q_hat, r.reshape(b, h, w, c).permute(0, 3, 1, 2)], dim=1)


def _configure_compile(in_process: bool) -> None:
    """Raise dynamo's recompilation limits (every shape and grad mode is its own graph).

    With ``in_process`` inductor compiles in this process (``compile_threads = 1``): its pool of
    compile workers otherwise starts in the background and, on a machine with few cores, steals
    CPU from the measurements that follow a compilation.
    """
    try:
        import torch._dynamo as dynamo
    except Exception:  # pragma: no cover
        return
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(dynamo.config, name):
            setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
    if in_process:
        try:
            import torch._inductor.config as inductor_config
            inductor_config.compile_threads = 1
        except Exception:  # pragma: no cover
            pass


class Compiled:
    """Lazily ``torch.compile``d reference functions (one compile cache per function)."""

    def __init__(self, mode: str | None) -> None:
        self.mode = mode
        self._fns: dict[str, Callable[..., Any]] = {}

    def get(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        if name not in self._fns:
            kwargs: dict[str, Any] = {"dynamic": False}
            if self.mode and self.mode != "default":
                kwargs["mode"] = self.mode
            self._fns[name] = torch.compile(fn, **kwargs)
        return self._fns[name]


def _make_fwd(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn(*args)
    return run


def _make_fwd_bwd(fn: Callable[..., Any], leaf: torch.Tensor, others: Sequence[Any],
                  targets: Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]) -> Callable[[], Any]:
    """fwd+bwd of ``fn(leaf, *others)``: backward from ``targets(result)`` = (outputs, their grads)."""
    def run() -> Any:
        leaf.grad = None
        result = fn(leaf, *others)
        outs, grads = targets(result)
        torch.autograd.backward(outs, grads)
        return result
    return run


def memory_cases(shape: Shape, device: torch.device, dtype: torch.dtype, use_compile: bool | str,
                 compiled: Compiled, seed: int) -> tuple[list[Case], dict[str, torch.Tensor]]:
    """The memory step, read, update and losses cases of one shape, and their inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(shape.b, shape.c, shape.h, shape.w, generator=gen).to(device, dtype)
    # Items as the model initialises them: uniform random, rows L2-normalised.
    items = F.normalize(torch.rand(shape.m, shape.c, generator=gen), dim=1).to(device, dtype)
    q_leaf = q.clone().requires_grad_(True)
    g_out = torch.randn(shape.b, 2 * shape.c, shape.h, shape.w, generator=gen).to(device, dtype)
    one = torch.ones((), device=device, dtype=dtype)

    def step_targets(res: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        out, _, compact, separate = res
        return [out, compact, separate], [g_out, one, one]

    def read_targets(res: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [_first(res)], [g_out]

    def losses_targets(res: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        compact, separate = res
        return [compact, separate], [one, one]

    elt = q.element_size()
    nc = shape.n * shape.c * elt
    mc = shape.m * shape.c * elt
    skip_compile = use_compile if isinstance(use_compile, str) else None
    no_sdpa = "n/a: SDPA is a read baseline only"
    no_bmm = "n/a"

    def comp(name: str, fn: Callable[..., Any]) -> Impl:
        return skip_compile if skip_compile else compiled.get(name, fn)

    cases: list[Case] = []
    # Memory step -------------------------------------------------------------------------
    for pass_ in ("fwd", "fwd+bwd"):
        if pass_ == "fwd":
            mk: Callable[[Callable[..., Any]], Impl] = lambda f: _make_fwd(f, q, items)  # noqa: E731
            nbytes, note = 3 * nc + mc, "read q once, write the (B,2C,H,W) output once (update and losses from the same pass)"
        else:
            mk = lambda f: _make_fwd_bwd(f, q_leaf, [items], step_targets)  # noqa: E731
            nbytes, note = 6 * nc + mc, "fwd (3NC) + bwd: read q and the q_hat half of grad_out, write grad_q (3NC)"
        c_step = comp("step", step_reference)
        cases.append(Case(shape.name, "memory step", pass_, {
            "fused": mk(step_public),
            "reference": mk(in_reference_mode(step_public)),
            "compile": c_step if isinstance(c_step, str) else mk(c_step),
            "sdpa": no_sdpa,
            "loop": mk(public_loop.memory_step),
            "bmm": no_bmm, "bmm2_fb": no_bmm,
        }, nbytes, note))
    # Read ----------------------------------------------------------------------------------
    for pass_ in ("fwd", "fwd+bwd"):
        if pass_ == "fwd":
            mk = lambda f: _make_fwd(f, q, items)  # noqa: E731
            nbytes, note = 3 * nc + mc, "read q (NC), write the output (2NC)"
        else:
            mk = lambda f: _make_fwd_bwd(f, q_leaf, [items], read_targets)  # noqa: E731
            nbytes, note = 6 * nc + mc, "fwd (3NC) + bwd: read q and the q_hat half of grad_out, write grad_q (3NC)"
        c_read = comp("read", reference.memory_read)
        cases.append(Case(shape.name, "read", pass_, {
            "fused": mk(read_public),
            "reference": mk(in_reference_mode(read_public)),
            "compile": c_read if isinstance(c_read, str) else mk(c_read),
            "sdpa": mk(sdpa_read),
            "loop": mk(public_loop.memory_read),
            "bmm": no_bmm, "bmm2_fb": no_bmm,
        }, nbytes, note))
    # Update (no gradient) ------------------------------------------------------------------
    mk = lambda f: _make_fwd(f, q, items)  # noqa: E731
    c_upd = comp("update", reference.memory_update)
    cases.append(Case(shape.name, "update", "fwd", {
        "fused": mk(ops.memory_update),
        "reference": mk(in_reference_mode(ops.memory_update)),
        "compile": c_upd if isinstance(c_upd, str) else mk(c_upd),
        "sdpa": no_sdpa,
        "loop": mk(public_loop.memory_update),
        "bmm": no_bmm, "bmm2_fb": no_bmm,
    }, nc + 2 * mc, "read q once (NC), read and write the items"))
    # Losses --------------------------------------------------------------------------------
    for pass_ in ("fwd", "fwd+bwd"):
        if pass_ == "fwd":
            mk = lambda f: _make_fwd(f, q, items)  # noqa: E731
            nbytes, note = nc + mc, "read q once (NC)"
        else:
            mk = lambda f: _make_fwd_bwd(f, q_leaf, [items], losses_targets)  # noqa: E731
            nbytes, note = 3 * nc + mc, "fwd (NC) + bwd: read q, write grad_q (2NC)"
        c_loss = comp("losses", reference.memory_losses)
        cases.append(Case(shape.name, "losses", pass_, {
            "fused": mk(ops.memory_losses),
            "reference": mk(in_reference_mode(ops.memory_losses)),
            "compile": c_loss if isinstance(c_loss, str) else mk(c_loss),
            "sdpa": no_sdpa,
            "loop": mk(public_loop.memory_losses),
            "bmm": no_bmm, "bmm2_fb": no_bmm,
        }, nbytes, note))
    return cases, {"q": q, "items": items}


def instance_normalized_features(shape: Shape, device: torch.device, dtype: torch.dtype,
                                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two frames' IN features (B, C, h, w) of one scene: a shared background plus different rain."""
    size = (shape.b, shape.c, shape.h, shape.w)
    background = torch.randn(size, generator=gen)
    f1 = F.instance_norm(background + 0.5 * torch.randn(size, generator=gen))
    f2 = F.instance_norm(background + 0.5 * torch.randn(size, generator=gen))
    return f1.to(device, dtype), f2.to(device, dtype)


def bsw_cases(shape: Shape, device: torch.device, dtype: torch.dtype, k: int, seed: int
              ) -> tuple[list[Case], dict[str, torch.Tensor]]:
    """Covariance, mask and covariance + BSW loss cases at one shape, and their inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    f1, f2 = instance_normalized_features(shape, device, dtype, gen)
    f1_leaf, f2_leaf = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
    b, c, hw = shape.b, shape.c, shape.h * shape.w
    flat1 = f1.reshape(b, c, hw)
    flat1_t = flat1.transpose(1, 2)
    elt = f1.element_size()
    feat, cov = b * c * hw * elt, b * c * c * elt
    with torch.no_grad():
        cov1, cov2 = reference.feature_covariance(f1), reference.feature_covariance(f2)

    def bare_bmm() -> torch.Tensor:
        return torch.bmm(flat1, flat1_t)

    b1_leaf, b2_leaf = flat1.clone().requires_grad_(True), f2.reshape(b, c, hw).clone().requires_grad_(True)
    g_cov = torch.randn(b, c, c, generator=gen).to(device, dtype)

    def bmm_pair_fwd_bwd() -> None:
        b1_leaf.grad = None
        b2_leaf.grad = None
        s1 = torch.bmm(b1_leaf, b1_leaf.transpose(1, 2))
        s2 = torch.bmm(b2_leaf, b2_leaf.transpose(1, 2))
        torch.autograd.backward([s1, s2], [g_cov, g_cov])

    def loss_fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            f1_leaf.grad = None
            f2_leaf.grad = None
            fn(f1_leaf, f2_leaf, k).backward()
        return run

    no_compile = "not timed: the k-means mask has data-dependent control flow"
    cases = [
        Case(shape.name, "covariance", "fwd", {
            "fused": _make_fwd(ops.feature_covariance, f1),
            "reference": _make_fwd(in_reference_mode(ops.feature_covariance), f1),
            "compile": no_compile, "sdpa": "n/a", "loop": "n/a",
            "bmm": bare_bmm, "bmm2_fb": "n/a",
        }, feat + cov, "read f (BC*HW), write Sigma (BCC)"),
        Case(shape.name, f"bsw_mask k{k}", "fwd", {
            "fused": _make_fwd(ops.bsw_mask, cov1, cov2, k),
            "reference": _make_fwd(in_reference_mode(ops.bsw_mask), cov1, cov2, k),
            "compile": no_compile, "sdpa": "n/a", "loop": "n/a", "bmm": "n/a", "bmm2_fb": "n/a",
        }, 2 * cov + b * c * c, "read both Sigma, write the bool mask"),
        Case(shape.name, f"cov+BSW loss k{k}", "fwd", {
            "fused": _make_fwd(ops.bsw_loss, f1, f2, k),
            "reference": _make_fwd(in_reference_mode(ops.bsw_loss), f1, f2, k),
            "compile": no_compile, "sdpa": "n/a", "loop": "n/a",
            "bmm": bare_bmm, "bmm2_fb": "n/a",
        }, 2 * feat, "read both frames' features once (2 BC*HW)"),
        Case(shape.name, f"cov+BSW loss k{k}", "fwd+bwd", {
            "fused": loss_fwd_bwd(ops.bsw_loss),
            "reference": loss_fwd_bwd(in_reference_mode(ops.bsw_loss)),
            "compile": no_compile, "sdpa": "n/a", "loop": "n/a",
            "bmm": bare_bmm, "bmm2_fb": bmm_pair_fwd_bwd,
        }, 6 * feat, "fwd (2 BC*HW) + bwd: read both features, write both grads (4 BC*HW)"),
    ]
    return cases, {"f1": f1, "f2": f2, "cov1": cov1, "cov2": cov2}


# --------------------------------------------------------------------------------------------
# Checks (one call each, before timing)
# --------------------------------------------------------------------------------------------


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def memory_checks(shape: Shape, q: torch.Tensor, items: torch.Tensor) -> dict[str, Any]:
    """Max |difference| of fused and per-item loop (each output) and of the SDPA read against the reference."""
    res: dict[str, Any] = {"shape": shape.name, "what": "memory"}
    with torch.no_grad():
        with ops.use_reference():
            ref = step_public(q, items)
        for name, fn in (("fused", step_public), ("loop", public_loop.memory_step)):
            try:
                got = fn(q, items)
                res[f"{name}_vs_reference"] = {k: _maxdiff(a, b) for k, a, b in
                                               zip(("read", "update", "compactness", "separateness"), got, ref)}
            except Exception as err:  # report, keep going
                res[f"{name}_vs_reference"] = f"error: {type(err).__name__}: {err}"
        res["sdpa_read_vs_reference"] = _maxdiff(sdpa_read(q, items), ref[0])
    return res


def bsw_checks(shape: Shape, f1: torch.Tensor, f2: torch.Tensor, k: int) -> dict[str, Any]:
    """Fused against reference: BSW loss, covariance, and the number of mask elements that differ."""
    res: dict[str, Any] = {"shape": shape.name, "what": "bsw"}
    with torch.no_grad():
        try:
            with ops.use_reference():
                ref_loss = ops.bsw_loss(f1, f2, k)
                c1, c2 = ops.feature_covariance(f1), ops.feature_covariance(f2)
                ref_mask = ops.bsw_mask(c1, c2, k)
            fc1, fc2 = ops.feature_covariance(f1), ops.feature_covariance(f2)
            res["fused_vs_reference"] = {
                "loss": _maxdiff(ops.bsw_loss(f1, f2, k), ref_loss),
                "loss_reference_value": float(ref_loss),
                "covariance": max(_maxdiff(fc1, c1), _maxdiff(fc2, c2)),
                # the same (reference) covariances in, the mask alone compared
                "mask_elements_differing_same_input": int((ops.bsw_mask(c1, c2, k) != ref_mask).sum()),
                # end to end: each path's own covariances (k-means boundaries are sensitive to rounding)
                "mask_elements_differing_end_to_end": int((ops.bsw_mask(fc1, fc2, k) != ref_mask).sum()),
                "mask_selected_reference": int(ref_mask.sum()),
            }
        except Exception as err:
            res["fused_vs_reference"] = f"error: {type(err).__name__}: {err}"
    return res


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _run(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_info() -> dict[str, Any]:
    commit = _run(["git", "rev-parse", "HEAD"])
    status = _run(["git", "status", "--porcelain"])
    return {"commit": commit or "unknown (git rev-parse HEAD failed: no git, or no commit yet)",
            "dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    """Everything a reader needs to place the numbers."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        affinity = os.cpu_count()
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu": {"model": cpu_model(), "cpu_count": os.cpu_count(), "usable_cpus": affinity,
                "torch_threads": torch.get_num_threads()},
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "git": git_info(),
        "build_info": _safe(ops.build_info),
        "ops_mode": _safe(ops.ops_mode),
        "fused_available": _safe(lambda: ops.fused_available(device)),
        "op_path": _safe(lambda: ops.op_path(device)),
        "mgid_ops_env": os.environ.get("MGID_OPS"),
        "loadavg": _loadavg(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1),
                      "multiprocessors": props.multi_processor_count,
                      "driver": _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])}
        env["allow_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews CPU timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not on Unix
        return None


class OtherLoad:
    """Share of the machine's CPU time that other processes used while this one ran (Linux).

    From ``/proc/stat`` (all CPUs, steal included) minus this process's own CPU time and that of
    its waited-for children (e.g. a compiler that torch.compile started).
    """

    def __init__(self) -> None:
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float, int] | None:
        try:
            with open("/proc/stat") as fh:
                lines = fh.read().splitlines()
            fields = [int(x) for x in lines[0].split()[1:]]
            ncpu = sum(1 for line in lines if re.match(r"cpu\d+ ", line))
        except (OSError, ValueError, IndexError):
            return None
        tick = os.sysconf("SC_CLK_TCK")
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / tick
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return time.perf_counter(), busy, own, ncpu

    def fraction(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[3] == 0:
            return None
        wall = end[0] - self.start[0]
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(0.0, others / (wall * end[3])) if wall > 0 else None


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as err:
        return f"error: {type(err).__name__}: {err}"


def device_kind(device: torch.device) -> str:
    """'cpu' or 'cuda-<gpu name>' as a file-name-safe slug."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device).lower()
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:40]


def fused_label(device: torch.device) -> tuple[str, str, bool]:
    """(what the fused column ran, a short form for the table, whether that is the reference)."""
    try:
        path = ops.op_path(device)
    except Exception as err:  # e.g. MGID_OPS=fused without the extension
        return f"unavailable ({err})", "unavailable", True
    if path == "PyTorch reference":
        if ops.ops_mode() == "reference":
            return "PyTorch reference (MGID_OPS=reference)", "reference (MGID_OPS)", True
        if not ops.build_info().get("extension"):
            return "PyTorch reference (extension not built)", "reference (not built)", True
        return f"PyTorch reference (no fused kernels for {device.type})", "reference (no kernel)", True
    short = {"fused CUDA kernels": "CUDA kernel", "fused C++ CPU kernels": "C++ CPU kernel"}.get(path, path)
    return path, short, False


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


class Notes:
    """Numbered footnotes for skipped cells (same text, same number)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def cell(row: dict[str, Any], notes: Notes, fused: bool) -> str:
    if row["status"] != "ok":
        if row["reason"] == "n/a" or (row["reason"] or "").startswith("n/a"):
            return "—"
        return f"{row['status']} {notes.ref(row['reason'])}"
    text = f"{fmt_time(row['median_s'])} ±{row['rel_iqr'] * 50:.0f}%"
    if not fused and row.get("speedup") is not None:
        text += f" ({row['speedup']:.2f}x)"
    return text


def markdown_report(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"# mgid ops benchmark: {result['device_kind']}, {env['date_utc']}", ""]
    dev = env.get("gpu", {}).get("name") if result["device"] == "cuda" else f"CPU: {env['cpu']['model']}"
    lines += [
        f"- device: {dev}; CPUs {env['cpu']['usable_cpus']} usable, torch threads {env['cpu']['torch_threads']}",
        f"- torch {env['torch']}, CUDA (torch build) {env['torch_cuda']}, python {env['python']}",
        f"- commit: {env['git']['commit']}" + (" (working tree dirty)" if env['git']['dirty'] else ""),
        f"- mgid build: {json.dumps(env['build_info'])}",
        f"- fused column ran: **{result['fused_path']}**"
        + (" — the fused column times the same code as the reference column" if result["fused_is_reference"] else ""),
        f"- dtype {result['settings']['dtype']}; timing: {result['settings']['timing']}",
        "- shapes: " + "; ".join(f"{n} = B{d['b']} C{d['c']} {d['h']}x{d['w']} M{d['m']}"
                                  for n, d in result["settings"]["shapes"].items())
        + (f"; BSW at {', '.join(result['settings']['bsw_shapes'])}, k {result['settings']['bsw_k']}"
           if result["settings"]["bsw_shapes"] else ""),
    ]
    other = env.get("other_processes_cpu_share")
    if other is not None and other > BUSY_SHARE:
        lines.append(f"- **warning**: other processes used {other:.0%} of the machine's CPU time during this run: "
                     "CPU times are inflated and noisy; ratios less so (the peers of a row are timed interleaved)"
                     + ("; with several torch threads on a busy machine, try --threads 1"
                        if result["device"] == "cpu" and env["cpu"]["torch_threads"] > 1 else ""))
    if not result["cuda_measured"]:
        lines.append(f"- **CUDA rows were not measured**: {result['cuda_not_measured_reason']}")
    lines += ["", "Cells: median ± half the inter-quartile range (as % of the median); "
              "(Nx) = peer time / fused time, above 1 the fused op is faster. "
              "GB/s = bytes an ideal fused op moves / fused median (model in the JSON). — = not applicable.", ""]
    notes = Notes()
    on_cuda = result["device"] == "cuda"
    header = ["shape", "op", "pass", "fused path"] + [h for _, h in IMPLS] + ["fused GB/s"]
    if on_cuda:
        header.append("host syncs (fused/ref/loop)")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    short_path = result["fused_path_short"]
    for case in result["cases"]:
        by_impl = {r["impl"]: r for r in case["rows"]}
        cells = [case["shape"], case["op"], case["pass"], short_path]
        for key in IMPL_KEYS:
            r = by_impl.get(key)
            cells.append(cell(r, notes, key == "fused") if r else "—")
        fused = by_impl.get("fused")
        cells.append(f"{fused['gbps']:.1f}" if fused and fused.get("gbps") else "-")
        if on_cuda:
            syncs = [by_impl.get(k, {}).get("host_syncs") for k in ("fused", "reference", "loop")]
            cells.append("/".join("-" if x is None else str(x) for x in syncs))
        lines.append("| " + " | ".join(cells) + " |")
    if notes.texts:
        lines += [""] + [f"[{i + 1}] {t}" for i, t in enumerate(notes.texts)]
    if result["targets"]:
        lines += ["", "## Targets (OPS.md)", ""]
        if result.get("busy_machine"):
            lines += ["Not reliable: other processes were busy on this machine during the run (see the warning "
                      "above); rerun on an idle machine"
                      + (" or with --threads 1." if env["cpu"]["torch_threads"] > 1 else "."), ""]
        lines += ["| target | measured | threshold | met |", "|---|---|---|---|"]
        for t in result["targets"]:
            met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
            if t["met"] is not None and not t.get("reliable", True):
                met += " (unreliable)"
            meas = "-" if t["measured"] is None else f"{t['measured']:.3g}{t.get('unit', '')}"
            lines.append(f"| {t['target']} | {meas} | {t['threshold']} | {met} |")
    lines += ["", "## Checks (max |difference| against the reference, one call)", ""]
    for chk in result["checks"]:
        lines.append(f"- {chk['shape']} {chk['what']}: " + json.dumps({k: v for k, v in chk.items()
                                                                       if k not in ('shape', 'what')}))
    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def find_row(result: dict[str, Any], shape: str, op: str, pass_: str, impl: str) -> dict[str, Any] | None:
    for case in result["cases"]:
        if case["shape"] == shape and case["op"] == op and case["pass"] == pass_:
            for r in case["rows"]:
                if r["impl"] == impl and r["status"] == "ok":
                    return r
    return None


def evaluate_targets(result: dict[str, Any], peak_gbps: float | None, k: int) -> list[dict[str, Any]]:
    """The OPS.md / issue targets, evaluated from the measured rows only."""
    targets: list[dict[str, Any]] = []

    def ratio_target(label: str, shape: str, op: str, pass_: str, peer: str, threshold: float) -> None:
        f = find_row(result, shape, op, pass_, "fused")
        p = find_row(result, shape, op, pass_, peer)
        measured = p["median_s"] / f["median_s"] if f and p else None
        targets.append({"target": label, "measured": measured, "unit": "x", "threshold": f">= {threshold}x",
                        "met": None if measured is None else measured >= threshold})

    if result["device"] == "cpu":
        for pass_ in ("fwd+bwd", "fwd"):
            ratio_target(f"CPU memory step {pass_} at train: fused vs per-item loop", "train",
                         "memory step", pass_, "loop", 5.0)
        ratio_target("CPU memory step fwd+bwd at train: fused vs torch.compile(reference)", "train",
                     "memory step", "fwd+bwd", "compile", 1.0)
        return targets
    ratio_target("memory step fwd+bwd at train: fused vs eager reference", "train", "memory step", "fwd+bwd",
                 "reference", 10.0)
    ratio_target("memory step fwd+bwd at train: fused vs torch.compile", "train", "memory step", "fwd+bwd",
                 "compile", 1.5)
    f = find_row(result, "train", "memory step", "fwd+bwd", "fused")
    syncs = f.get("host_syncs") if f else None
    targets.append({"target": "memory step fwd+bwd at train: host syncs (fused)", "measured": syncs, "unit": "",
                    "threshold": "0", "met": None if syncs is None else syncs == 0})
    for shape in ("infer4k", "mnad_large"):
        for op in ("read", "update"):
            r = find_row(result, shape, op, "fwd", "fused")
            frac = r["gbps"] / peak_gbps if r and r.get("gbps") and peak_gbps else None
            targets.append({"target": f"{op} fwd at {shape}: fraction of peak bandwidth ({peak_gbps} GB/s)",
                            "measured": frac, "unit": "", "threshold": ">= 0.70",
                            "met": None if frac is None else frac >= 0.70})
    for pass_ in ("fwd+bwd", "fwd"):
        f = find_row(result, "train", f"cov+BSW loss k{k}", pass_, "fused")
        p = find_row(result, "train", f"cov+BSW loss k{k}", pass_, "bmm")
        measured = f["median_s"] / p["median_s"] if f and p else None
        targets.append({"target": f"cov+BSW loss {pass_} at train: fused time / bare bmm time",
                        "measured": measured, "unit": "x", "threshold": "<= 1.2x",
                        "met": None if measured is None else measured <= 1.2})
    return targets


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time mgid's memory and whitening ops (fused / eager reference / torch.compile / SDPA / "
                    "per-item loop / bmm) and write a markdown table and a JSON file.",
)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device to time on; auto = cuda when available, else cpu (default: %(default)s)")
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated shapes from {list(SHAPES)}; default {DEFAULT_SHAPES['cpu']} on CPU, "
                        f"{DEFAULT_SHAPES['cuda']} on CUDA, train with --quick")
    p.add_argument("--bsw-shapes", default="train",
                   help="comma-separated shapes at which to time covariance + BSW loss (B, C, h, w of the shape), "
                        "or 'none' (default: %(default)s)")
    p.add_argument("--bsw-k", type=int, default=50, help="number of 1-D k-means clusters of the BSW mask (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=None,
                   help="samples per measurement (default 15 on CPU, 50 on CUDA, 5 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per measurement (default 3, 1 with --quick)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop sampling a measurement after this many seconds, once it has 3 samples "
                        "(default 1.0; 0.25 with --quick)")
    p.add_argument("--compile", default="auto",
                   help="where to time torch.compile(reference): 'all' shapes, 'none', or a comma-separated list of "
                        "shapes; auto = all on CUDA, train on CPU (compiling takes ~30 s a graph there), none with "
                        "--quick (default: %(default)s)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode for the compile peer: default, reduce-overhead, max-autotune, ... "
                        "(default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"],
                   help="dtype of queries, items and features (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs (default: torch's)")
    p.add_argument("--impls", default=",".join(IMPL_KEYS),
                   help="comma-separated implementations to time, others are reported as not requested "
                        "(default: %(default)s)")
    p.add_argument("--no-l2-flush", action="store_true", help="do not flush the L2 cache before each CUDA sample")
    p.add_argument("--no-sync-count", action="store_true",
                   help="do not count host syncs per call on CUDA (torch.cuda.set_sync_debug_mode)")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="peak memory bandwidth for the bandwidth target; default from the GPU name "
                        "(H100 3000 as in OPS.md, H200 4800), none otherwise")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: %(default)s)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="folder for the markdown and JSON results (default: benchmarks/results in the repository)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: train shape, few samples, no torch.compile (~30 s on 2 CPU cores)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch.cuda.is_available() is False "
              f"(torch {torch.__version__}, CUDA build {torch.version.cuda})", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    kind = device.type
    if args.threads:
        torch.set_num_threads(args.threads)
    shape_names = [s for s in (args.shapes or ("train" if args.quick else DEFAULT_SHAPES[kind])).split(",") if s]
    bsw_names = [] if args.bsw_shapes.strip().lower() == "none" else [s for s in args.bsw_shapes.split(",") if s]
    for s in shape_names + bsw_names:
        if s not in SHAPES:
            print(f"error: unknown shape {s!r}; choose from {list(SHAPES)}", file=sys.stderr)
            return 2
    requested = set(x for x in args.impls.split(",") if x)
    unknown = requested - set(IMPL_KEYS)
    if unknown:
        print(f"error: unknown --impls {sorted(unknown)}; choose from {IMPL_KEYS}", file=sys.stderr)
        return 2
    repeats = args.repeats or (5 if args.quick else (50 if kind == "cuda" else 15))
    warmup = args.warmup or (1 if args.quick else 3)
    max_seconds = args.max_seconds or (0.25 if args.quick else 1.0)
    compile_where = args.compile.strip().lower()
    if compile_where == "auto":
        compile_where = "none" if args.quick else ("all" if kind == "cuda" else "train")
    compile_shapes = (set(shape_names) if compile_where == "all" else set() if compile_where == "none"
                      else {x for x in compile_where.split(",") if x})
    if compile_shapes - set(SHAPES):
        print(f"error: --compile {args.compile!r}: expected auto, all, none or shapes from {list(SHAPES)}",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    timer = BenchTimer(device, repeats, warmup, max_seconds, flush_l2=not args.no_l2_flush)
    _configure_compile(in_process=kind == "cpu" or (os.cpu_count() or 1) <= 4)
    compiled = Compiled(args.compile_mode)

    path_label, path_short, fused_is_reference = fused_label(device)
    cuda_reason = None
    if kind != "cuda":
        cuda_reason = ("--device cpu was given" if torch.cuda.is_available()
                       else "no CUDA device on this machine (torch.cuda.is_available() is False)")
    peak = args.peak_gbps
    if peak is None and kind == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for key, v in PEAK_GBPS_BY_NAME if key in name), None)

    print(f"mgid bench_ops on {kind} ({torch.cuda.get_device_name(device) if kind == 'cuda' else cpu_model()}); "
          f"fused path: {path_label}; shapes {shape_names}; torch.compile: {compile_where}", file=sys.stderr)
    if cuda_reason:
        print(f"CUDA rows were not measured: {cuda_reason}", file=sys.stderr)

    t_start = time.perf_counter()
    load_start = _loadavg()
    other_load = OtherLoad()
    all_cases: list[tuple[Case, Shape]] = []
    checks: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in shape_names:
        shape = SHAPES[name]
        if name in compile_shapes:
            use_compile: bool | str = True
        elif compile_where == "none":
            use_compile = "not run: --compile none" + (" (--quick)" if args.quick else "")
        else:
            use_compile = f"not run: --compile {compile_where} (--compile all to time it here)"
        try:
            cases, inputs = memory_cases(shape, device, dtype, use_compile, compiled, args.seed)
            checks.append(memory_checks(shape, inputs["q"], inputs["items"]))
        except Exception as err:  # e.g. out of memory at a large shape
            errors.append(f"{name}: could not set up the memory cases: {type(err).__name__}: {err}")
            continue
        all_cases += [(c, shape) for c in cases]
    for name in bsw_names:
        shape = SHAPES[name]
        try:
            cases, inputs = bsw_cases(shape, device, dtype, args.bsw_k, args.seed)
            checks.append(bsw_checks(shape, inputs["f1"], inputs["f2"], args.bsw_k))
        except Exception as err:
            errors.append(f"{name}: could not set up the BSW cases: {type(err).__name__}: {err}")
            continue
        all_cases += [(c, shape) for c in cases]

    case_results: list[dict[str, Any]] = []
    for case, shape in all_cases:
        by_impl: dict[str, dict[str, Any]] = {}
        to_time: dict[str, Callable[[], Any]] = {}
        for impl in IMPL_KEYS:
            fn = case.impls.get(impl, "n/a")
            row: dict[str, Any] = {"impl": impl, "status": "ok", "reason": None}
            if isinstance(fn, str) and fn.startswith("n/a"):
                row.update(status="skipped", reason=fn)
            elif impl not in requested:
                row.update(status="skipped", reason="not requested (--impls)")
            elif impl == "fused" and path_label.startswith("unavailable"):
                row.update(status="skipped", reason=path_label)
            elif isinstance(fn, str):
                row.update(status="skipped", reason=fn)
            else:
                to_time[impl] = fn
            by_impl[impl] = row
        timings = timer.measure_many(to_time) if to_time else {}
        for impl, res in timings.items():
            row = by_impl[impl]
            if isinstance(res, Exception):
                msg = str(res).strip().splitlines()[0][:200] if str(res).strip() else ""
                row.update(status="error", reason=f"{type(res).__name__}: {msg}")
                errors.append(f"{case.shape} {case.op} {case.pass_} {impl}: {type(res).__name__}: {msg}")
                if os.environ.get("MGID_BENCH_TRACEBACK"):
                    traceback.print_exception(res)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            row.update({f: getattr(res, f) for f in ("median_s", "p25_s", "p75_s", "min_s", "max_s", "samples",
                                                     "calls_per_sample", "first_call_s")})
            row["rel_iqr"] = res.rel_iqr
            if case.bytes_ideal:
                row["gbps"] = case.bytes_ideal / res.median_s / 1e9
            if impl == "fused":
                row["path"] = path_label
            if not args.no_sync_count and device.type == "cuda":
                try:
                    row["host_syncs"] = count_host_syncs(to_time[impl], device)
                except Exception as err:  # noqa: BLE001
                    row["host_syncs"] = None
                    row["host_syncs_error"] = f"{type(err).__name__}: {err}"
        rows = [by_impl[k] for k in IMPL_KEYS]
        for row in rows:
            if row["status"] == "ok":
                shown = fmt_time(row["median_s"])
            elif (row["reason"] or "").startswith("n/a"):
                continue
            else:
                shown = f"{row['status']}: {row['reason']}"
            print(f"  {case.shape:10s} {case.op:18s} {case.pass_:8s} {row['impl']:10s} {shown}", file=sys.stderr)
        fused_row = next((r for r in rows if r["impl"] == "fused" and r["status"] == "ok"), None)
        for r in rows:
            if fused_row and r["status"] == "ok":
                r["speedup"] = r["median_s"] / fused_row["median_s"]
        case_results.append({"shape": case.shape, "shape_desc": shape.describe(), "op": case.op, "pass": case.pass_,
                             "bytes_ideal": case.bytes_ideal, "bytes_model": case.bytes_note, "rows": rows})

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result: dict[str, Any] = {
        "schema": 1,
        "benchmark": "mgid bench_ops",
        "device": kind,
        "device_kind": device_kind(device),
        "environment": environment(device),
        "fused_path": path_label,
        "fused_path_short": path_short,
        "fused_is_reference": fused_is_reference,
        "cuda_measured": kind == "cuda",
        "cuda_not_measured_reason": cuda_reason,
        "settings": {
            "shapes": {n: dataclasses.asdict(SHAPES[n]) for n in shape_names},
            "bsw_shapes": bsw_names, "bsw_k": args.bsw_k, "dtype": args.dtype, "compile": compile_where,
            "compile_mode": args.compile_mode, "repeats": repeats, "warmup": warmup, "max_seconds": max_seconds,
            "quick": args.quick, "impls": sorted(requested), "peak_gbps": peak,
            "timing": ("CUDA events, one call per sample" + ("" if args.no_l2_flush else ", 256 MB L2 flush before each")
                       if kind == "cuda" else "perf_counter, samples of >= 2 ms of back-to-back calls")
                      + f", up to {repeats} samples or {max_seconds} s after {warmup} warm-up call(s)",
            "fwd_means": "inputs without requires_grad, under torch.no_grad()",
            "fwd_bwd_means": "query/features require grad; backward from every differentiable output "
                             "(read output with a random grad, each loss with grad 1)",
        },
        "cases": case_results,
        "checks": checks,
        "errors": errors,
        "elapsed_s": None,
    }
    result["environment"]["loadavg_start"] = load_start
    frac = other_load.fraction()
    result["environment"]["other_processes_cpu_share"] = None if frac is None else round(frac, 3)
    result["busy_machine"] = frac is not None and frac > BUSY_SHARE
    result["targets"] = evaluate_targets(result, peak, args.bsw_k)
    for target in result["targets"]:
        target["reliable"] = not result["busy_machine"]
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    md = markdown_report(result)
    result["markdown"] = md
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"bench_ops_{result['device_kind']}_{stamp}"
    base.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    base.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {base}.md and {base}.json ({result['elapsed_s']} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
