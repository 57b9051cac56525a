"""A multi-exit MLP: hidden layers in a stack, a linear exit after each."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradsurg.multiexit.equilibrium import equilibrium_branches


class MultiExitMLP(nn.Module):
    """`forward(x)` returns one logits tensor per hidden layer, shallowest first.

    `gradient_equilibrium`: each layer's parameters get the mean of the gradients of the exits
    reaching them instead of their sum (gradsurg's `equilibrium_branches`); outputs unchanged.
    """

    def __init__(self, *, inputs: int, hidden: int, layers: int, classes: int,
                 gradient_equilibrium: bool = False) -> None:
        super().__init__()
        self.gradient_equilibrium = gradient_equilibrium
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU())
            for i in range(layers)
        )
        self.exits = nn.ModuleList(nn.Linear(hidden, classes) for _ in range(layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, (layer, exit_head) in enumerate(zip(self.layers, self.exits, strict=True)):
            x = layer(x)
            to_exit = x
            if self.gradient_equilibrium:
                to_exit, x = equilibrium_branches(x, index, len(self.exits))
            outputs.append(exit_head(to_exit))
        return outputs


@torch.no_grad()
def exit_accuracies(model: MultiExitMLP, x: Tensor, y: Tensor) -> list[float]:
    """Accuracy of every exit when all examples leave there."""
    model.eval()
    return [float((logits.argmax(-1) == y).float().mean()) for logits in model(x)]
