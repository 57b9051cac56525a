"""Loss *terms*: registered, recipe-named `nn.Module`s over all exits' logits.

The loss vocabulary: a *function* (`losses.functions`) is math on tensors; a *term* (here) is
what a recipe names under `loss_groups`, built as `Term(num_exits, **options)` by
`LOSS_TERMS.build` and called as `term(exit_logits, labels) -> scalar`; a *group*
(`gradsurg.loss_groups`) is a named weighted sum whose gradient is one row of the matrix.
Terms are modules so that one may learn (ELBERT's exit weights are parameters, trained with
the model and kept in checkpoints). An installed package adds its own through the
`gradsurg.loss_terms` entry point group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.functions import (
    check_gamma,
    check_temperature,
    exit_distillation_loss,
    self_distillation_loss,
    task_loss,
)
from gradsurg.registry import Registry

__all__ = [
    "LOSS_TERMS",
    "EarlyTaskSum",
    "ExitLossTerm",
    "ExitSelfDistillation",
    "ExitTask",
    "FinalTask",
    "LayerWeighted",
    "LearnedExitWeights",
    "SelfDistillation",
    "per_exit_groups",
]


class ExitLossTerm(nn.Module):
    """Base class: `forward(exit_logits, labels)` returns one scalar loss.

    `exit_logits[i]` is exit i's `[B, num_labels]` output, the last one the final exit.
    `num_exits` lets a term size its parameters or weights when it is built.
    """

    name: ClassVar[str] = ""

    def __init__(self, num_exits: int) -> None:
        super().__init__()
        if num_exits < 1:
            raise ConfigError(f"loss term {self.name!r}: needs at least one exit")
        self.num_exits = num_exits

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, float]:
        """Facts worth logging (e.g. learned weights), as plain floats."""
        return {}


LOSS_TERMS = Registry("loss term", "gradsurg.loss_terms", base=ExitLossTerm)
"""Loss terms by recipe name, built as `LOSS_TERMS.build(spec, num_exits, where=...)`;
classes join with the bare `@LOSS_TERMS.register`."""


@LOSS_TERMS.register
class FinalTask(ExitLossTerm):
    """The final exit's task loss (cross-entropy, or MSE for regression)."""

    name = "final_task"

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return task_loss(exit_logits[-1], labels)


@LOSS_TERMS.register
class EarlyTaskSum(ExitLossTerm):
    """The plain sum of the task losses of every exit but the last (DeeBERT's stage 2)."""

    name = "early_task_sum"

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return torch.stack([task_loss(x, labels) for x in exit_logits[:-1]]).sum()


@LOSS_TERMS.register
class SelfDistillation(ExitLossTerm):
    """RomeBERT's self-distillation of the early exits from the (detached) final exit."""

    name = "self_distillation"

    def __init__(self, num_exits: int, *, gamma: float = 0.9, temperature: float = 3.0) -> None:
        super().__init__(num_exits)
        check_gamma(gamma)  # now, so a bad recipe fails before any training
        check_temperature(temperature)
        self.gamma = gamma
        self.temperature = temperature

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return self_distillation_loss(exit_logits, labels, gamma=self.gamma,
                                      temperature=self.temperature)


def _exit_index(term: str, exit: Any, num_exits: int, *, last_allowed: bool) -> int:
    """Exit numbers are 1-based like the layers (exit 1 after layer 1); returns 0-based."""
    highest = num_exits if last_allowed else num_exits - 1
    if isinstance(exit, bool) or not isinstance(exit, int) or not 1 <= exit <= highest:
        raise ConfigError(f"loss term {term!r}: exit={exit!r} is invalid; allowed: an integer "
                          f"in 1..{highest}")
    return exit - 1


@LOSS_TERMS.register
class ExitTask(ExitLossTerm):
    """One exit's own task loss; `exit` counts from 1 (after the first layer)."""

    name = "exit_task"

    def __init__(self, num_exits: int, *, exit: int) -> None:
        super().__init__(num_exits)
        self.exit = exit
        self.index = _exit_index(self.name, exit, num_exits, last_allowed=True)

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return task_loss(exit_logits[self.index], labels)


@LOSS_TERMS.register
class ExitSelfDistillation(ExitLossTerm):
    """One early exit's share of RomeBERT's SD loss:
    (1 - gamma) task_i + gamma T^2 KL(p_L^T || p_i^T), the final exit detached.

    The shares of exits 1..L-1 sum to `self_distillation`; as separate loss groups they give a
    combiner one gradient row per exit.
    """

    name = "exit_self_distillation"

    def __init__(self, num_exits: int, *, exit: int, gamma: float = 0.9,
                 temperature: float = 3.0) -> None:
        super().__init__(num_exits)
        check_gamma(gamma)
        check_temperature(temperature)
        self.exit = exit
        self.index = _exit_index(self.name, exit, num_exits, last_allowed=False)
        self.gamma = gamma
        self.temperature = temperature

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        return exit_distillation_loss(exit_logits[self.index], exit_logits[-1], labels,
                                      gamma=self.gamma, temperature=self.temperature)


def per_exit_groups(kind: str, num_exits: int) -> dict[str, dict[str, Any] | str]:
    """One loss group per exit, named `exit1` .. `exitL`: the final exit's task loss, and each
    early exit's SD share (`kind="sd"`) or plain task loss (`kind="task"`)."""
    if kind not in ("sd", "task"):
        raise ConfigError(f"per-exit loss groups: kind {kind!r} is unknown; allowed: sd, task")
    early = "exit_self_distillation" if kind == "sd" else "exit_task"
    groups: dict[str, dict[str, Any] | str] = {
        f"exit{i}": {"name": early, "exit": i} for i in range(1, num_exits)}
    groups[f"exit{num_exits}"] = "final_task"
    return groups


@LOSS_TERMS.register
class LayerWeighted(ExitLossTerm):
    """PABEE's loss: the exits' task losses averaged with weights proportional to depth.

        L = sum_i i * L_i / sum_i i     (i = 1 .. n, exit i after layer i)

    Zhou et al., "BERT Loses Patience: Fast and Robust Inference with Early Exit" (NeurIPS
    2020): deeper exits are more reliable, so they weigh more.
    """

    name = "layer_weighted"

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        losses = torch.stack([task_loss(x, labels) for x in exit_logits])
        depth = torch.arange(1, len(exit_logits) + 1, dtype=losses.dtype, device=losses.device)
        return (depth * losses).sum() / depth.sum()


#: Where ELBERT's code starts each early exit's weight logit (sigmoid(4.0) = 0.982).
DEFAULT_INIT = 4.0


@LOSS_TERMS.register
class LearnedExitWeights(ExitLossTerm):
    """ELBERT's loss: exit losses weighted by trainable weights.

        w_i = sigmoid(W_i)  for the early exits i < n,   w_n = M - sum_{i<n} w_i
        L   = sum_i w_i L_i

    Xie et al., "ELBERT: Fast ALBERT with Confidence-Window Based Early Exit" (ICASSP 2021).
    The weights always sum to M (`total`; default: the number of exits, the sum a plain
    average times n would have), and the final exit keeps at least M - (n - 1). W starts at
    `init` (default 4.0, where ELBERT's code starts it: w = 0.982, every exit weighted about
    1). Started at 0 (w = 0.5) the early exits train less: over three seeds ELBERT's recipe on
    MiniLM then needed 60.3% of the time to come within a point of its final exit, against
    49.5% from 4.0 (docs/depth_study.md). Note the pull on W_i: d L / d W_i = w_i (1 - w_i)
    (L_i - L_n), so an early exit whose loss stays above the final one loses weight over
    training.
    """

    name = "learned_exit_weights"

    def __init__(self, num_exits: int, *, total: float | None = None,
                 init: float = DEFAULT_INIT) -> None:
        super().__init__(num_exits)
        if isinstance(init, bool) or not isinstance(init, int | float) or not math.isfinite(
                init):
            raise ConfigError(f"loss term 'learned_exit_weights': init={init!r} is invalid; "
                              "allowed: a finite number (the logit every early weight starts "
                              "at)")
        total = float(num_exits) if total is None else total
        if isinstance(total, bool) or not isinstance(total, int | float) or not (
                math.isfinite(total) and total > num_exits - 1):
            raise ConfigError(
                f"loss term 'learned_exit_weights': total={total!r} is invalid; allowed: a "
                f"number > {num_exits - 1} (the early weights' largest sum), so the final "
                "exit's weight stays positive")
        self.total = float(total)
        self.logits = nn.Parameter(torch.full((num_exits - 1,), float(init)))

    def exit_weights(self) -> Tensor:
        early = torch.sigmoid(self.logits)
        return torch.cat([early, (self.total - early.sum()).reshape(1)])

    def forward(self, exit_logits: Sequence[Tensor], labels: Tensor) -> Tensor:
        losses = torch.stack([task_loss(x, labels) for x in exit_logits])
        return (self.exit_weights().to(losses) * losses).sum()

    def describe(self) -> dict[str, float]:
        with torch.no_grad():
            weights = self.exit_weights().tolist()
        return {f"exit_weight/{i + 1}": w for i, w in enumerate(weights)}
