"""The training objective: the network on both frames of a pair and the loss, as one module, and the step.

`MGIDObjective` is what the loop calls once per step and what DDP (and ``torch.compile``, for the network inside
it) wraps: ``total, terms, out1 = objective(frame1, frame2)``; frame 1 reads and updates the memory, frame 2 reads
the update. `optimizer_step` back-propagates the total and steps the optimiser. How the memory changes in a step:
docs/TRAIN.md, "Design notes".
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from mgid.losses import MGIDLoss
from mgid.models import MGIDOutput
from mgid.precision import autocast


def _as_float(out: MGIDOutput) -> MGIDOutput:
    """``out`` with every floating tensor in fp32 (the loss is computed in fp32 under mixed precision)."""
    return dataclasses.replace(out, **{
        f.name: getattr(out, f.name).float() for f in dataclasses.fields(out)
        if isinstance(getattr(out, f.name), torch.Tensor) and getattr(out, f.name).is_floating_point()})


class MGIDObjective(nn.Module):
    """``net`` on both frames and ``criterion`` on the outputs: ``forward(frame1, frame2)`` returns
    ``(total, terms, out1)`` -- the total loss, the detached named terms and frame 1's output (image logs).

    ``net`` is the network as the loop runs it (the plain `mgid.models.MGIDNet` or ``torch.compile`` of
    it); ``precision`` (fp32, bf16, fp16) selects autocast for the network, the loss stays fp32.
    """

    def __init__(self, net: nn.Module, criterion: MGIDLoss, precision: str = "fp32") -> None:
        super().__init__()
        self.net, self.criterion, self.precision = net, criterion, precision

    def forward(self, frame1: torch.Tensor, frame2: torch.Tensor,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], MGIDOutput]:
        with autocast(frame1.device, self.precision):
            out1 = self.net(frame1)
            out2 = self.net(frame2)
        if self.precision != "fp32":
            out1, out2 = _as_float(out1), _as_float(out2)
        total, terms = self.criterion(out1, out2, frame1, frame2)
        return total, terms, out1


def optimizer_step(optimizer: torch.optim.Optimizer, total: torch.Tensor,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Back-propagate ``total`` and step ``optimizer`` (gradients cleared first; ``scaler``: fp16 loss scaling).

    The second half of a training step, after the loop has checked that the loss is finite."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        total.backward()
        optimizer.step()
