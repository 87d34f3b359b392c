"""One optimisation step, in the two halves the loop runs with the finiteness check in between.

`compute_loss` runs the objective (`mgid.train.objective.MGIDObjective`, possibly DDP-wrapped) on a
batch; `optimizer_step` back-propagates the total and steps the optimiser (through the gradient scaler
under fp16). `train_step` is the older single entry point the benchmarks call (network or
`PairForward`, then the loss; an ``apply`` closure for the second half).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mgid.losses import MGIDLoss
from mgid.models import MGIDOutput
from mgid.train.objective import _as_float, autocast_context


def compute_loss(objective: nn.Module, frame1: torch.Tensor, frame2: torch.Tensor,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], MGIDOutput]:
    """``objective(frame1, frame2)``: the total loss, the detached terms and frame 1's output; the memory
    items move here (the loop's one forward per step)."""
    return objective(frame1, frame2)


def optimizer_step(optimizer: torch.optim.Optimizer, total: torch.Tensor,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Back-propagate ``total`` and step ``optimizer`` (gradients cleared first; ``scaler``: fp16 loss scaling)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()


def train_step(net: nn.Module, criterion: MGIDLoss, optimizer: torch.optim.Optimizer, frame1: torch.Tensor,
               frame2: torch.Tensor, *, pair: nn.Module | None = None, precision: str = "fp32",
               scaler: torch.amp.GradScaler | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor], MGIDOutput, Callable[[], None]]:
    """Forward both frames of a batch (B, 3, H, W) and compute the loss (the benchmarks' entry point).

    The frames run through ``pair`` (a `PairForward`, possibly compiled or DDP-wrapped) when it is given,
    else through ``net`` twice. Returns the total loss, the detached terms, frame 1's output and
    ``apply`` (`optimizer_step` on the total), for the caller to run after checking the loss. The
    training loop itself runs `MGIDObjective` through `compute_loss` and `optimizer_step`.
    """
    forward: Callable[[torch.Tensor, torch.Tensor], tuple[MGIDOutput, MGIDOutput]] = (
        pair if pair is not None else (lambda a, b: (net(a), net(b))))
    with autocast_context(frame1.device, precision):
        out1, out2 = forward(frame1, frame2)
    if precision != "fp32":
        out1, out2 = _as_float(out1), _as_float(out2)
    total, terms = criterion(out1, out2, frame1, frame2)
    return total, terms, out1, lambda: optimizer_step(optimizer, total, scaler)
