"""Loss *groups*: named weighted sums whose gradient is one row of the matrix.

The loss vocabulary: a *function* is math on tensors; a *term* is any callable returning a
scalar tensor (a function, or a registered, recipe-named `nn.Module` such as the multi-exit
terms in `gradsurg.multiexit.losses.terms`); a *group* is a named, weighted sum of terms and
of other groups. Each group becomes one row of the gradient matrix, so grouping decides which
losses are treated as one direction and which are allowed to conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from gradsurg.errors import GradsurgError

LossTerm = Callable[..., Tensor]
Part = Union[LossTerm, "LossGroup"]


class LossGroup:
    """A named sum  L = sum_j w_j * part_j(*args, **kwargs)  over terms and nested groups.

    Every part receives the same arguments (typically the model outputs and the batch). A
    part may be a plain function or an `nn.Module` term (learned ones: see `modules`).
    """

    def __init__(
        self,
        name: str,
        parts: Mapping[str, Part],
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if not parts:
            raise GradsurgError(f"loss group {name!r} has no terms")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(parts))
        if unknown:
            raise GradsurgError(f"loss group {name!r}: weights for unknown terms {unknown}")
        self.name = name
        self.parts = dict(parts)
        self.weights = {key: float(weights.get(key, 1.0)) for key in self.parts}

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.evaluate(*args, **kwargs)[0]

    def evaluate(self, *args: Any, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """Return the group's loss and every term's unweighted value, keyed `group/term`."""
        total: Tensor | None = None
        breakdown: dict[str, Tensor] = {}
        for key, part in self.parts.items():
            if isinstance(part, LossGroup):
                value, inner = part.evaluate(*args, **kwargs)
                breakdown.update({f"{self.name}/{k}": v for k, v in inner.items()})
            else:
                value = part(*args, **kwargs)
            _check_scalar(value, f"{self.name}/{key}")
            breakdown[f"{self.name}/{key}"] = value
            weighted = value * self.weights[key]
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, breakdown

    def modules(self) -> dict[str, nn.Module]:
        """The parts that are `nn.Module`s (nested groups' too), keyed `group/part`: what a
        program attaches to its model so learned terms train and reach its checkpoints."""
        found: dict[str, nn.Module] = {}
        for key, part in self.parts.items():
            if isinstance(part, LossGroup):
                found.update({f"{self.name}/{k}": m for k, m in part.modules().items()})
            elif isinstance(part, nn.Module):
                found[f"{self.name}/{key}"] = part
        return found

    def __repr__(self) -> str:
        inside = ", ".join(f"{w:g}*{k}" for k, w in self.weights.items())
        return f"LossGroup({self.name!r}: {inside})"


def evaluate_groups(groups: list[LossGroup], *args: Any, **kwargs: Any) -> dict[str, Tensor]:
    """Evaluate several groups on the same inputs: `{group name: scalar loss}`."""
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise GradsurgError(f"loss group names must be unique, got {names}")
    return {group.name: group(*args, **kwargs) for group in groups}


def _check_scalar(value: object, where: str) -> None:
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise GradsurgError(f"loss term {where!r} must return a scalar tensor, got {shape}")
    if not torch.is_floating_point(value):
        raise GradsurgError(f"loss term {where!r} returned a {value.dtype} tensor, need float")
