"""Small models shared by the core tests: two heads over a shared trunk, and a frozen part;
three layers with an exit after each."""

from __future__ import annotations

import torch
from torch import nn

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS


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


# ---- three groups, one of whose rows can be poisoned (non-finite tests) ------------------

#: Every registered combiner (plugins included) with options that fit ThreeGroupNet.
ALL_SPECS = {name: name for name in COMBINERS.names()}
ALL_SPECS["project"] = {"name": "project", "target": "a", "reference": "b"}
ALL_SPECS["merge"] = {"name": "merge", "groups": ["a", "b"], "inner": "pcgrad", "into": "ab",
                  "then": "sum"}  # then ab + c


class Exits(nn.Module):
    """Three numbered layers with an exit after each: exit i's loss reaches layers 0..i-1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList([nn.Linear(5, 5) for _ in range(3)])
        self.exits = nn.ModuleList([nn.Linear(5, 2) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer, exit_head in zip(self.layers, self.exits):
            x = torch.tanh(layer(x))
            out.append(exit_head(x))
        return out


def exit_losses(model: Exits, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(12, 5, generator=generator), torch.randint(0, 2, (12,), generator=generator)
    ce = nn.functional.cross_entropy
    return {f"exit{i + 1}": ce(logits, y) for i, logits in enumerate(model(x))}


class Poison(torch.autograd.Function):
    """Identity forward; the gradient flowing back is multiplied by `factor` (NaN, inf, or a
    large number that overflows only once the loss is scaled)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class ThreeGroupNet(nn.Module):
    """A shared trunk and three heads (three groups: `krum` and `trimmed_mean` need them);
    group b's path into the trunk can be poisoned, which leaves its loss, its head's gradient
    and the other groups' rows finite."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.a, self.b, self.c = nn.Linear(16, 3), nn.Linear(16, 3), nn.Linear(16, 3)

    def losses(self, x, y, factor=None):
        h = self.trunk(x)
        ce = nn.functional.cross_entropy
        into_b = h if factor is None else Poison.apply(h, factor)
        return {"a": ce(self.a(h), y), "b": ce(self.b(into_b), (y + 1) % 3),
                "c": ce(self.c(h), (y + 2) % 3)}


def three_group_batch(seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def step_losses(model, surgery, seed, factor=None, scale=None):
    """What `surgery.backward` takes for one step of ThreeGroupNet on `three_group_batch(seed)`:
    its `{group: loss}`, or, for a combiner that takes b batches per step (sdmgrad, modo), b
    batches (seeds seed, seed + 100, ...) of which only the second is poisoned by `factor`
    (its bad row is `b@2`). `scale`: applied to every loss (a GradScaler's `scale`)."""
    batches = []
    for index in range(surgery.combiner.batches_per_step):
        x, y = three_group_batch(seed + 100 * index)
        poison = factor if index == min(1, surgery.combiner.batches_per_step - 1) else None
        losses = model.losses(x, y, poison)
        batches.append({k: scale(v) for k, v in losses.items()} if scale else losses)
    return batches[0] if len(batches) == 1 else batches


def poisonable_setup(name, **options):
    """ThreeGroupNet, AdamW and a Surgery on its trunk with the combiner `ALL_SPECS[name]`."""
    model = ThreeGroupNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    surgery = Surgery(model, optimizer, ALL_SPECS[name], include=["trunk.*"], **options)
    return model, optimizer, surgery
