"""The loss-weighting contract: `{group: loss}` in, `{group: weighted loss}` out.

A weighting acts on the groups' *losses*, before any gradient exists, so it needs no per-group
gradients of its own and composes with every combiner: `Surgery(..., weighting=...)` weighs
the raw losses in `backward`, so the combiner combines the weighted rows (with `sum`, one
backward pass of one weighted loss). Weightings are `nn.Module`s: learned ones hold
parameters the optimizer trains (`surgery.parameters()`), stateful ones keep their state in
buffers, so `state_dict()` holds tensors only (safe for `torch.load(weights_only=True)`) and
goes into `surgery.state_dict()`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry

#: Smallest loss value a log or a reciprocal is taken of (keeps a zero loss finite).
TINY = 1e-20


class LossWeighting(nn.Module):
    """Base class: `forward(losses)` returns the weighted losses, same keys, same order.

    Subclasses implement `weigh` on the `[k]` vector of losses (in `groups` order). Hooks
    `Surgery` calls (`gradsurg.weightings.loop.WeightingStep`), where a method needs them:

    - `step_end(losses, after)` after every optimizer step that was not skipped, with the
      step's losses over the global batch as a float64 `[k]` vector, and (only when
      `needs_losses_after_step`) the same batch's losses re-evaluated after the step;
    - `epoch_end()` after every epoch (`surgery.epoch_end()`).
    """

    name: ClassVar[str] = ""
    #: True when `step_end` needs the step's batch evaluated again after the update (FAMO).
    needs_losses_after_step: ClassVar[bool] = False

    def __init__(self, groups: Sequence[str]) -> None:
        super().__init__()
        groups = list(groups)
        if len(groups) < 2:
            raise ConfigError(f"weighting {self.name!r}: needs at least two loss groups to "
                              f"weigh, got {groups}")
        if len(set(groups)) != len(groups):
            raise ConfigError(f"weighting {self.name!r}: loss group names repeat: {groups}")
        self.groups = groups
        self._last: Tensor | None = None  # multipliers applied by the last forward (logging)

    @property
    def k(self) -> int:
        return len(self.groups)

    def forward(self, losses: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if set(losses) != set(self.groups):
            raise ConfigError(f"weighting {self.name!r} was built for the loss groups "
                              f"{self.groups}, got {list(losses)}")
        stacked = torch.stack([losses[group].reshape(()) for group in self.groups])
        weighted = self.weigh(stacked)
        by_group = dict(zip(self.groups, weighted.unbind()))
        return {group: by_group[group] for group in losses}

    def weigh(self, losses: Tensor) -> Tensor:
        """The weighted losses, `[k]` in, `[k]` out (differentiable through `losses`)."""
        raise NotImplementedError

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        """After an optimizer step; `losses` are the step's global-batch losses (float64)."""
        del losses, after

    def epoch_end(self) -> None:
        """After each epoch."""

    def weights(self) -> Tensor:
        """The multipliers on the raw losses' gradients at the last forward (float64 `[k]`)."""
        if self._last is None:
            return torch.full((self.k,), math.nan, dtype=torch.float64)
        return self._last.to(torch.float64).cpu()  # read when logging: no sync per step

    def describe(self) -> dict[str, float]:
        """The current weights (and state worth logging) as plain floats."""
        return {f"weight/{group}": float(value)
                for group, value in zip(self.groups, self.weights().tolist())}

    def _applied(self, weights: Tensor, losses: Tensor) -> Tensor:
        """`weights * losses` with the weights held constant (a detached loss-dependent
        weighting): the rows the combiner receives are `weights_i * grad L_i`."""
        weights = weights.detach()
        self._last = weights
        return weights.to(losses.dtype) * losses


WEIGHTINGS = Registry("loss weighting", "gradsurg.weightings", base=LossWeighting)
"""Loss weightings by recipe name, built as `WEIGHTINGS.build(spec, groups, where=...)`;
classes join with the bare `@WEIGHTINGS.register`."""


def positive(losses: Tensor) -> Tensor:
    """Detached float64 losses floored at `TINY`, for logs and reciprocals."""
    return losses.detach().to(torch.float64).clamp_min(TINY)


def check_number(value: object, *, name: str, key: str, low: float | None = None,
                 low_open: bool = True, integer: bool = False) -> float:
    """A finite number (> low, or >= low when not `low_open`), else a one-line ConfigError."""
    kinds = (int,) if integer else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        what = "an integer" if integer else "a finite number"
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ConfigError(f"weighting {name!r}: {key}={value!r} is invalid; allowed: "
                          f"{what}{bound}")
    return float(value)


def exit_numbers(groups: Sequence[str], name: str) -> list[int]:
    """The exit number N of each group named `exitN` (per-exit groups, recipe key
    `exit_groups`), or a one-line ConfigError for a weighting that needs them."""
    numbers = []
    for group in groups:
        digits = group[4:] if group.startswith("exit") else ""
        if not digits.isdigit() or int(digits) < 1:
            raise ConfigError(f"weighting {name!r} weighs per-exit loss groups exit1..exitL "
                              f"(recipe key exit_groups), got {list(groups)}")
        numbers.append(int(digits))
    return numbers


#: The range a learned weighting's starting multiplier must lie in: well inside float32's
#: normal numbers, so weight x loss neither rounds to 0 (no gradient reaches the model) nor
#: overflows (every step skipped).
WEIGHT_RANGE = (2.0**-100, 2.0**100)


def check_initial_weight(weight: float, *, name: str, key: str, value: float,
                         formula: str) -> None:
    """A one-line ConfigError when `weight` (the multiplier `value` of `key` gives every
    group at the start, by `formula`) lies outside `WEIGHT_RANGE`."""
    low, high = WEIGHT_RANGE
    if not low <= weight <= high:
        raise ConfigError(
            f"weighting {name!r}: {key}={value!r} starts every group's weight at {formula} = "
            f"{weight:.3g}, which float32 training {'rounds to 0' if weight < low else 'overflows'}"
            f" (no weight would move); allowed: a starting weight between {low:.3g} and "
            f"{high:.3g}")


def per_group_numbers(values: object, *, name: str, key: str, groups: Sequence[str],
                      default: float, low: float | None = None) -> list[float]:
    """One number per loss group (default: `default` for each), each checked like
    `check_number`, or a one-line ConfigError naming the weighting, the key and the groups."""
    k = len(groups)
    if values is None:
        return [default] * k
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != k:
        what = "positive" if low == 0 else "finite"
        raise ConfigError(f"weighting {name!r}: {key}={values!r} is invalid; allowed: {k} "
                          f"{what} numbers, one per loss group {list(groups)}")
    return [check_number(value, name=name, key=key, low=low) for value in values]


def check_preference(preference: object, *, name: str, groups: Sequence[str]) -> list[float]:
    """A weighting's `preference`: one positive number per loss group (default all 1)."""
    return per_group_numbers(preference, name=name, key="preference", groups=groups,
                             default=1.0, low=0)
