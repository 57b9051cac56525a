"""A multi-exit MLP: hidden layers in a stack, a linear exit after each."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MultiExitMLP(nn.Module):
    """`forward(x)` returns one logits tensor per hidden layer, shallowest first."""

    def __init__(self, *, inputs: int, hidden: int, layers: int, classes: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU())
            for i in range(layers)
        )
        self.exits = nn.ModuleList(nn.Linear(hidden, classes) for _ in range(layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for layer, exit_head in zip(self.layers, self.exits, strict=True):
            x = layer(x)
            outputs.append(exit_head(x))
        return outputs


@torch.no_grad()
def exit_accuracies(model: MultiExitMLP, x: Tensor, y: Tensor) -> list[float]:
    """Accuracy of every exit when all examples leave there."""
    model.eval()
    return [float((logits.argmax(-1) == y).float().mean()) for logits in model(x)]
