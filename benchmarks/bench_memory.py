"""The memory op family of ``bench_ops.py``: the memory step (read + update + losses), read,
update and losses, forward and forward+backward, and their checks and targets.

Peers of the fused ``mgid.ops`` call: the same call in ``use_reference()`` mode, ``torch.compile``
of the reference functions, ``F.scaled_dot_product_attention`` as a read baseline, and the
per-item Python loop of the public MNAD/MGID code (``public_loop.py``, the baseline the tests'
smoke run checks against the reference). Run through ``python -m benchmarks.bench_ops``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import mgid.ops as ops
from benchmarks import public_loop
from benchmarks.op_cases import Case, Impl, Shape, find_row, in_reference_mode, make_fwd, make_fwd_bwd, maxdiff
from mgid.ops import reference


def _first(x: Any) -> Any:
    """The op output proper when an op returns (out, extras)."""
    return x[0] if isinstance(x, (tuple, list)) else x


def step_public(q: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Memory step through the public API (``ops.memory_step``: read, update and both losses in one pass)."""
    step = ops.memory_step(q, items)
    return step.read, step.items, step.compactness, step.separateness


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
    # backward targets per op: (outputs, their grads)
    targets: dict[str, Callable[[Any], tuple[list[torch.Tensor], list[torch.Tensor]]]] = {
        "memory step": lambda res: ([res[0], res[2], res[3]], [g_out, one, one]),
        "read": lambda res: ([_first(res)], [g_out]),
        "losses": lambda res: (list(res), [one, one]),
    }
    elt = q.element_size()
    nc, mc = shape.n * shape.c * elt, shape.m * shape.c * elt
    fwd_bwd_note = "fwd (3NC) + bwd: read q and the q_hat half of grad_out, write grad_q (3NC)"
    # op -> (fused, peer "loop", reference function to compile, SDPA peer, {pass: (bytes, note)})
    table: list[tuple[str, Callable[..., Any], Callable[..., Any], Callable[..., Any], Impl, dict[str, Any]]] = [
        ("memory step", step_public, public_loop.memory_step, step_reference, "n/a: SDPA is a read baseline only", {
            "fwd": (3 * nc + mc, "read q once, write the (B,2C,H,W) output once (update and losses from the same pass)"),
            "fwd+bwd": (6 * nc + mc, fwd_bwd_note)}),
        ("read", read_public, public_loop.memory_read, reference.memory_read, sdpa_read, {
            "fwd": (3 * nc + mc, "read q (NC), write the output (2NC)"),
            "fwd+bwd": (6 * nc + mc, fwd_bwd_note)}),
        ("update", ops.memory_update, public_loop.memory_update, reference.memory_update,
         "n/a: SDPA is a read baseline only", {"fwd": (nc + 2 * mc, "read q once (NC), read and write the items")}),
        ("losses", ops.memory_losses, public_loop.memory_losses, reference.memory_losses,
         "n/a: SDPA is a read baseline only", {
             "fwd": (nc + mc, "read q once (NC)"),
             "fwd+bwd": (3 * nc + mc, "fwd (NC) + bwd: read q, write grad_q (2NC)")}),
    ]
    cases: list[Case] = []
    for op, fused, loop, ref_fn, sdpa, passes in table:
        for pass_, (nbytes, note) in passes.items():
            def mk(f: Callable[..., Any], pass_: str = pass_, op: str = op) -> Callable[[], Any]:
                return make_fwd(f, q, items) if pass_ == "fwd" else make_fwd_bwd(f, q_leaf, [items], targets[op])
            key = {"memory step": "step"}.get(op, op)
            c_ref = use_compile if isinstance(use_compile, str) else compiled.get(key, ref_fn)
            cases.append(Case(shape.name, op, pass_, {
                "fused": mk(fused),
                "reference": mk(in_reference_mode(fused)),
                "compile": c_ref if isinstance(c_ref, str) else mk(c_ref),
                "sdpa": sdpa if isinstance(sdpa, str) else mk(sdpa),
                "loop": mk(loop),
                "bmm": "n/a", "bmm2_fb": "n/a",
            }, nbytes, note))
    return cases, {"q": q, "items": items}


def memory_checks(shape: Shape, q: torch.Tensor, items: torch.Tensor) -> dict[str, Any]:
    """Max |difference| of fused and per-item loop (each output) and of the SDPA read against the reference."""
    res: dict[str, Any] = {"shape": shape.name, "what": "memory"}
    with torch.no_grad():
        with ops.use_reference():
            ref = step_public(q, items)
        for name, fn in (("fused", step_public), ("loop", public_loop.memory_step)):
            try:
                got = fn(q, items)
                res[f"{name}_vs_reference"] = {k: maxdiff(a, b) for k, a, b in
                                               zip(("read", "update", "compactness", "separateness"), got, ref)}
            except Exception as err:  # report, keep going
                res[f"{name}_vs_reference"] = f"error: {type(err).__name__}: {err}"
        res["sdpa_read_vs_reference"] = maxdiff(sdpa_read(q, items), ref[0])
    return res


def memory_targets(result: dict[str, Any], peak_gbps: float | None) -> list[dict[str, Any]]:
    """The docs/OPS.md / issue targets of the memory ops, evaluated from the measured rows only."""
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
    return targets
