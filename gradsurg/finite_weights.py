"""A model holding NaN or infinity is never saved, checkpointed or scored as if it were fine.

The non-finite rule skips steps whose loss or gradient is not finite, but a finite gradient
times a huge learning rate can still write NaN / inf into the weights; every later step is
then skipped (up to `max_nonfinite_steps`) and, without this check, the run would save NaN
tensors and report the accuracy of a constant prediction with exit code 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradsurg.errors import NonFiniteError

__all__ = ["check_finite_outputs", "check_finite_weights", "first_non_finite"]


@torch.no_grad()
def first_non_finite(module: nn.Module) -> str | None:
    """Name of the first parameter or buffer of `module` holding NaN/inf, else None."""
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_finite_weights(module: nn.Module, *, when: str) -> None:
    """Raise NonFiniteError naming the first non-finite tensor (`when`: e.g. 'after training')."""
    name = first_non_finite(module)
    if name is not None:
        raise NonFiniteError(
            f"the model holds NaN/inf {when} (first in {name}); nothing more is saved: lower "
            "lr, set max_grad_norm, or check the data")


def check_finite_outputs(outputs: Tensor, *, what: str) -> None:
    """Raise NonFiniteError if `outputs` (e.g. the exits' logits on the dev set) hold NaN/inf."""
    bad = ~torch.isfinite(outputs)
    if bool(bad.any()):
        raise NonFiniteError(
            f"{what}: {int(bad.sum())} of {bad.numel()} outputs are NaN/inf, so no metric would "
            "mean anything; the model is not saved (lower lr or check the data)")
