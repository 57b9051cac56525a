"""The per-group gradient matrix: one row per loss group over the selected parameters.

Two ways to fill it, equal to within float tolerance:
- sequential: one backward pass per group over the retained graph. Each selected parameter's
  `.grad` is pointed at its slice of the group's row, so autograd accumulates straight into the
  matrix (no copies) and micro-batches add up for free.
- batched: a single `autograd.grad(..., is_grads_batched=True)` call, which vmaps the backward
  pass over the k one-hot output vectors; fast on GPUs, usually slower on CPUs.
Parameters outside the selection get the plain sum of the groups' gradients in `.grad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from gradsurg.engines import local, sharded_grad
from gradsurg.errors import ConfigError
from gradsurg.params import FlatLayout

BackwardMode = Literal["auto", "sequential", "batched"]
BACKWARD_MODES = ("auto", "sequential", "batched")


def resolve_mode(mode: BackwardMode, device: torch.device, *,
                 sharded: bool = False) -> Literal["sequential", "batched"]:
    """`auto` picks the batched path on accelerators and the sequential one on CPUs.

    Sharded parameters (FSDP2) take the sequential path: their gradients exist only through
    `.backward()`, which the engine's hooks reduce-scatter into `.grad`."""
    if sharded:
        if mode == "batched":
            raise ConfigError("mode='batched' takes gradients with torch.autograd.grad, which "
                              "cannot reach FSDP2's sharded parameters; use mode='sequential' "
                              "(or 'auto')")
        return "sequential"
    if mode == "auto":
        return "sequential" if device.type == "cpu" else "batched"
    return mode


class GradientMatrix:
    """A `[k, n]` matrix of per-group gradients that accumulates over micro-batches."""

    def __init__(
        self, names: Sequence[str], layout: FlatLayout, *, buffer: Tensor | None = None,
        sharded: bool = False,
    ) -> None:
        """`buffer`: a previous step's storage to reuse (zeroed here); on CPUs a fresh
        allocation of this size costs more in page faults than the rest of the combination.
        `sharded`: the model's parameters are FSDP2 shards (the rows hold this rank's part)."""
        self.names = tuple(names)
        self.layout = layout
        self.sharded = sharded
        shape = (len(self.names), layout.size)
        if buffer is not None and buffer.shape == shape and buffer.dtype == layout.dtype:
            self.values = buffer.zero_()
        else:
            self.values = torch.zeros(shape, dtype=layout.dtype, device=layout.device)

    def accumulate(
        self,
        losses: Sequence[Tensor],
        outside: Sequence[nn.Parameter],
        *,
        mode: Literal["sequential", "batched"],
    ) -> None:
        """Add the gradients of `losses` (one per row, in order) into the matrix."""
        if mode == "sequential":
            self._accumulate_sequential(losses, outside)
        else:
            self._accumulate_batched(losses, outside)

    def _accumulate_sequential(self, losses: Sequence[Tensor], outside: Sequence[nn.Parameter]):
        selected = self.layout.params
        # FSDP2's sharded parameters are not the graph's leaves (its forward runs on gathered
        # copies), so they cannot be `inputs`; a plain backward reaches them through its hooks.
        inputs = None if self.sharded else [*selected, *outside]
        live = [i for i, loss in enumerate(losses) if loss.requires_grad]
        for position, row in enumerate(live):
            views = self.layout.views(self.values[row])
            for p, view in zip(selected, views):
                p.grad = sharded_grad(p, view)
            torch.autograd.backward(
                losses[row], inputs=inputs, retain_graph=position < len(live) - 1
            )
            for p, view in zip(selected, views):
                # Autograd (and FSDP2) add in place into an existing .grad; if anything
                # replaced the tensor instead (a hook, a future change), keep its value.
                if p.grad is not None and local(p.grad).data_ptr() != view.data_ptr():
                    view.copy_(local(p.grad))
                p.grad = None

    def _accumulate_batched(self, losses: Sequence[Tensor], outside: Sequence[nn.Parameter]):
        live = [i for i, loss in enumerate(losses) if loss.requires_grad]
        if not live:
            return
        selected = self.layout.params
        inputs = [*selected, *outside]
        stacked = torch.stack([losses[i].reshape(()) for i in live])
        one_hot = torch.eye(len(live), dtype=stacked.dtype, device=stacked.device)
        grads = torch.autograd.grad(
            stacked, inputs, grad_outputs=one_hot, is_grads_batched=True, allow_unused=True
        )
        rows = self.values[live] if len(live) != len(losses) else self.values
        for view, grad in zip(self.layout.views(rows), grads[: len(selected)]):
            if grad is not None:
                view.add_(grad)
        if len(live) != len(losses):
            self.values[live] = rows
        for p, grad in zip(outside, grads[len(selected) :]):
            if grad is not None:
                total = grad.sum(0)
                p.grad = total if p.grad is None else p.grad.add_(total)
