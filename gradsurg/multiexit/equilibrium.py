"""Gradient equilibrium (Li et al., ICCV 2019) as a building block of any multi-exit forward.

In a network whose layer i (0-based) feeds both exit i and layer i+1, the exits' gradients add
up on the way down: layer 0 gets the sum of all L exits' gradients, the top layer one. Gradient
equilibrium rescales them at each branch point, 1/r towards the exit and (r-1)/r towards the
next layer (r = L - i, the exits that read this output or a deeper one), so the product
telescopes and every layer's parameters receive the *mean* of the gradients of the exits that
reach them. The forward pass is unchanged, the exits' own gradients too; one backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["equilibrium_branches"]


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; the gradient flowing back is multiplied by `scale`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


def equilibrium_branches(hidden: Tensor, index: int, num_exits: int) -> tuple[Tensor, Tensor]:
    """`(what exit index reads, what layer index + 1 reads)` from layer `index`'s output.

    Both are `hidden` in the forward pass. Where gradients are recorded they scale the
    gradient flowing back by 1/r and (r-1)/r, r = num_exits - index; the top layer's output
    (r = 1) and anything under `torch.no_grad` pass unchanged.
    """
    if not 0 <= index < num_exits:
        raise ValueError(f"layer index {index} is outside 0..{num_exits - 1}")
    reaching = num_exits - index
    if reaching == 1 or not torch.is_grad_enabled():
        return hidden, hidden
    return (_ScaleGradient.apply(hidden, 1.0 / reaching),
            _ScaleGradient.apply(hidden, (reaching - 1) / reaching))
