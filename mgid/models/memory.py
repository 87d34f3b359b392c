"""The MNAD memory as a module: M unit-length items (M, C) read by every query, updated in training.

The items are state, not a trained parameter: a buffer (saved in ``state_dict``, moved by ``.to``,
never given a gradient), carried from step to step. All arithmetic is in `mgid.ops`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mgid import ops
from mgid.errors import InputError


@dataclass
class MemoryOutput:
    """features: (B, 2C, h, w) = concat[q_hat, softmax-weighted items].

    compactness, separateness: 0-dim MNAD losses of the queries against the items used for the
    read, differentiable in the query; ``None`` when not asked for (inference).
    """

    features: torch.Tensor
    compactness: torch.Tensor | None = None
    separateness: torch.Tensor | None = None


def random_unit_items(
    num_items: int, channels: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(M, C) float32 on the CPU: uniform [0, 1) then L2-normalised per row (MNAD's initialisation)."""
    return F.normalize(torch.rand(num_items, channels, generator=generator), dim=1)


class MemoryModule(nn.Module):
    """Memory read (always) and update (training) of a query (B, C, h, w).

    Args:
        num_items: M, the number of items (MGID's training code: 20).
        channels: C, the query width.
        grad_through_weights: let the gradient reach the query through the read weights
            (MNAD detaches them: False).
        update_max_over_assigned: normalise the update weights by the maximum over the queries
            assigned to each item (the paper) instead of over all queries (public code: False).
        generator: seeds the initial items.
    """

    items: torch.Tensor

    def __init__(
        self,
        num_items: int = 20,
        channels: int = 64,
        grad_through_weights: bool = False,
        update_max_over_assigned: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if num_items < 2:
            # The separateness loss needs a second-nearest item.
            raise InputError(f"num_items must be >= 2, got {num_items}")
        self.num_items = num_items
        self.channels = channels
        self.grad_through_weights = grad_through_weights
        self.update_max_over_assigned = update_max_over_assigned
        self.register_buffer("items", torch.empty(num_items, channels))
        self.reset_items(generator)
        #: Turns this process's update statistics into the new items when set:
        #: ``fn(stats, items) -> new items``. Distributed training sets it to an all-reduce across ranks
        #: (`mgid.train.distributed.attach_memory_sync`); unset, the items are `mgid.ops.finish_update`.
        self.stats_reducer: Callable[[ops.UpdateStats, torch.Tensor], torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (f"num_items={self.num_items}, channels={self.channels}, "
                f"grad_through_weights={self.grad_through_weights}, "
                f"update_max_over_assigned={self.update_max_over_assigned}")

    @torch.no_grad()
    def reset_items(self, generator: torch.Generator | None = None) -> None:
        """Re-draw the items (uniform, then unit rows), in place on the buffer's device and dtype; nothing on the
        meta device, which holds shapes only (`mgid.derain.derainer.check_weights` builds the network there, and
        normalising there would import torch._dynamo and sympy: 160 MB for the process)."""
        if self.items.is_meta:
            return
        self.items.copy_(random_unit_items(self.num_items, self.channels, generator))

    def forward(self, query: torch.Tensor, update: bool, with_losses: bool | None = None) -> MemoryOutput:
        """Read the memory with ``query`` (B, C, h, w); with ``update``, then move the items.

        The read and the losses use the items as they were on entry; the update (if any) is
        stored afterwards, so two sequential calls read P then P' (the training recipe).
        ``with_losses`` defaults to ``update``.
        """
        if query.dim() != 4 or query.shape[1] != self.channels:
            raise InputError(f"query must have shape (B, {self.channels}, h, w), got {tuple(query.shape)}")
        if with_losses is None:
            with_losses = update
        # Autograd may save the items for the backward pass; the update below replaces the buffer
        # with a new tensor rather than writing it in place, so the saved one stays valid (eager and
        # torch.compile: an in-place write would bump the version of the tensor the compiled graph saved).
        items = self.items
        if not update and not with_losses:
            return MemoryOutput(ops.memory_read(query, items, grad_through_weights=self.grad_through_weights))
        # One pass for the read, the losses and the update statistics (ops.memory_step).
        step = ops.memory_step(query, items, grad_through_weights=self.grad_through_weights,
                               max_over_assigned=self.update_max_over_assigned, with_losses=with_losses,
                               update="stats" if update else "none")
        if update:
            self._store(step.items, items)
        return MemoryOutput(step.read, step.compactness, step.separateness)

    @torch.no_grad()
    def _store(self, stats: ops.UpdateStats, items: torch.Tensor) -> None:
        """The one place the items change: the new items from the update statistics of ``items``.

        A distributed run sets ``stats_reducer`` (`mgid.train.distributed.all_reduce_update_stats`) so that
        every rank stores the update over all ranks' queries. The statistics are fp32 even for an
        fp16/bf16 query (autocast); the items stay in their own dtype (fp32).
        """
        if self.stats_reducer is None:
            new_items = ops.finish_update(items, stats)
        else:
            new_items = self.stats_reducer(stats, items)
        self.items = new_items.to(self.items.dtype).detach()
