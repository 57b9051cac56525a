"""A tiny two-group model and the plain gradsurg loop the integration tests compare against."""

from __future__ import annotations

import torch
from models import TwoHeads
from torch import nn

from gradsurg import Surgery


class GroupNet(nn.Module):
    """TwoHeads whose forward returns `{group: mean loss}`, as frameworks call models."""

    def __init__(self, seed: int = 0, *, stacked: bool = False) -> None:
        super().__init__()
        self.net = TwoHeads(seed)
        self.stacked = stacked

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        a, b, extra = self.net(x)
        if self.stacked:  # the heads packed into one tensor: links every head to every loss
            a, b = torch.stack([a, b]).unbind(0)
        ce = nn.functional.cross_entropy
        return {"a": ce(a, y), "b": ce(b, (y + 1) % 3) + extra.pow(2).mean()}


def rows(n: int = 16, seed: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def micro_batches(data: list[dict[str, torch.Tensor]], size: int):
    for start in range(0, len(data), size):
        part = data[start:start + size]
        yield {key: torch.stack([row[key] for row in part]) for key in part[0]}


def plain_loop(model: nn.Module, data, *, batch_size: int, accumulation: int, lr: float,
               combiner="pcgrad", max_grad_norm: float | None = None,
               optimizer_cls=torch.optim.AdamW, **surgery_options) -> nn.Module:
    """The reference: gradsurg's own loop, losses divided by the accumulation steps."""
    optimizer = optimizer_cls(model.parameters(), lr=lr)
    surgery = Surgery(model, optimizer, combiner, accumulation_steps=accumulation,
                      max_grad_norm=max_grad_norm, **surgery_options)
    batches = list(micro_batches(data, batch_size))
    for index, batch in enumerate(batches):
        losses = model(**batch)
        surgery.backward({k: v / accumulation for k, v in losses.items()})
        if (index + 1) % accumulation == 0:
            optimizer.step()
            optimizer.zero_grad()
    return model


def assert_same_weights(a: nn.Module, b: nn.Module, *, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=atol, msg=name)


def weighted_loop(model: nn.Module, data, weighting, *, epochs: int, batch_size: int,
                  accumulation: int, lr: float, combiner="pcgrad",
                  max_grad_norm: float | None = None, optimizer_cls=torch.optim.AdamW
                  ) -> nn.Module:
    """The reference for a weighting, written by hand as loops did before
    `Surgery(weighting=...)`: weigh each micro-batch, step, then `step_end` with the step's
    mean raw losses (float64) unless it was skipped, `epoch_end` after each epoch."""
    optimizer = optimizer_cls([*model.parameters(), *weighting.parameters()], lr=lr)
    surgery = Surgery(model, optimizer, combiner, max_grad_norm=max_grad_norm)
    batches = list(micro_batches(data, batch_size))
    for _ in range(epochs):
        for start in range(0, len(batches), accumulation):
            window = batches[start:start + accumulation]
            raw = []
            for index, batch in enumerate(window):
                losses = model(**batch)
                raw.append(torch.stack([losses[g].detach().to(torch.float64)
                                        for g in weighting.groups]))
                surgery.backward({k: v / accumulation for k, v in weighting(losses).items()},
                                 last_micro_batch=index == len(window) - 1)
            optimizer.step()
            optimizer.zero_grad()
            if not surgery.diagnostics.get("nonfinite/skipped"):
                weighting.step_end(sum(raw) / len(raw))
        weighting.epoch_end()
    return model
