"""Small models shared by the core tests: two heads over a shared trunk, and a frozen part."""

from __future__ import annotations

import torch
from torch import nn


class TwoHeads(nn.Module):
    """trunk -> (head_a, head_b); `frozen` never trains; `only_b` is reached by group b only."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.LayerNorm(16))
        self.head_a = nn.Linear(16, 3)
        self.head_b = nn.Linear(16, 3)
        self.only_b = nn.Linear(16, 1)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.trunk(self.frozen(x))
        return self.head_a(h), self.head_b(h), self.only_b(h)


def group_losses(model: TwoHeads, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example *sums* (not means), so two half batches add up to the whole batch."""
    a, b, extra = model(x)
    ce = nn.functional.cross_entropy
    return {
        "a": ce(a, y, reduction="sum"),
        "b": ce(b, (y + 1) % 3, reduction="sum") + extra.pow(2).sum(),
    }


def batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator)
