"""LayerSkip's early-exit loss scales and rotational curriculum, over per-exit groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.weightings.base import WEIGHTINGS, LossWeighting, check_number, exit_numbers

#: LayerSkip's loss scale types: the scale of exit l (1-based), before the early-exit factor.
SCALES = ("one", "l", "sum_l", "inv_l", "sqrt_l", "inv_sqrt_l")
CURRICULA = ("none", "rotational")


@WEIGHTINGS.register
class LayerSkip(LossWeighting):
    """Elhoushi et al., "LayerSkip: Enabling Early Exit Inference and Self-Speculative
    Decoding" (ACL 2024), the early-exit loss: sum over the exits trained this step of
    s_l / (sum of s over them) * L_l, with, for exit l (its number, 1-based):

        one: 1   l: l   sum_l: l_1 + ... + l (over the exits trained this step, in order)
        inv_l: 1 / l   sqrt_l: sqrt(l)   inv_sqrt_l: 1 / sqrt(l)

    each early exit's scale times `early_scale` (their e_scale; the last exit's times 1), and
    the scales normalized to sum 1, as the authors' code does (`sum`'s scale would be k).
    `curriculum: rotational` trains one early exit per step, cycling exit1, exit2, ... (the
    optimizer steps taken so far pick it), plus the last exit always; `none` trains all.

    The groups must be the per-exit groups exit1..exitL (`exit_groups`), the highest number
    being the last exit. Differences from the authors' code: their rotation rolls a mask over
    all L layers, so one step in L trains the last layer alone; here every step trains one
    early exit. An exit that is not trained this step gets weight 0, but its group's
    backward pass is still computed (a zero row): the curriculum's compute saving is not
    realized. State (buffer): the optimizer steps taken (the rotation's position).
    """

    name = "layerskip"

    def __init__(self, groups: Sequence[str], *, scale: str = "sum_l",
                 early_scale: float = 1.0, curriculum: str = "none") -> None:
        super().__init__(groups)
        if scale not in SCALES:
            raise ConfigError(f"weighting 'layerskip': scale={scale!r} is invalid; allowed: "
                              f"{', '.join(SCALES)}")
        if curriculum not in CURRICULA:
            raise ConfigError(f"weighting 'layerskip': curriculum={curriculum!r} is invalid; "
                              f"allowed: {', '.join(CURRICULA)}")
        self.scale, self.curriculum = scale, curriculum
        self.early_scale = check_number(early_scale, name=self.name, key="early_scale", low=0)
        self.exits = exit_numbers(self.groups, self.name)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def trained(self) -> list[bool]:
        """Which groups are trained at the current step."""
        last = max(self.exits)
        if self.curriculum == "none":
            return [True] * self.k
        early = sorted(n for n in self.exits if n != last)
        chosen = early[int(self.steps) % len(early)]
        return [n in (chosen, last) for n in self.exits]

    def current(self) -> Tensor:
        """The float64 weights of this step, one per group."""
        last = max(self.exits)
        trained = self.trained()
        order = sorted((n, i) for i, n in enumerate(self.exits) if trained[i])
        numbers = torch.tensor([float(n) for n, _ in order], dtype=torch.float64)
        scales = {"one": torch.ones_like(numbers), "l": numbers,
                  "sum_l": torch.cumsum(numbers, dim=0), "inv_l": 1 / numbers,
                  "sqrt_l": numbers.sqrt(), "inv_sqrt_l": 1 / numbers.sqrt()}[self.scale]
        early = torch.full_like(numbers, self.early_scale)
        scales = scales * torch.where(numbers < last, early, torch.ones_like(numbers))
        weights = torch.zeros(self.k, dtype=torch.float64)
        weights[[i for _, i in order]] = scales / scales.sum()
        return weights

    def weigh(self, losses: Tensor) -> Tensor:
        return self._applied(self.current().to(losses.device), losses)

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        self.steps += 1
