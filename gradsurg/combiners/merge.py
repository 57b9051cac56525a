"""`merge`: combine some groups into one row with one combiner, then the rest with another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import Combined, Combiner, row_index
from gradsurg.errors import ConfigError


class Merge(Combiner):
    """Compose combiners: `inner` turns the rows of `groups` into one row named `into`, and
    `then` combines that row with the remaining groups.

    Example: project `final` against `sd`, then add an auxiliary group plainly:
        Merge(groups=["final", "sd"], inner=Project(target="final", reference="sd"),
              into="main", then=Sum())
    """

    name = "merge"

    def __init__(
        self, *, groups: Sequence[str], inner: Combiner, into: str, then: Combiner
    ) -> None:
        if len(groups) < 1 or len(set(groups)) != len(groups):
            raise ConfigError(f"combiner 'merge': groups must be distinct names, got {groups}")
        self.groups = list(groups)
        self.inner = inner
        self.into = into
        self.then = then

    def group_names(self) -> list[str]:
        return [*self.groups, *(n for n in self.then.group_names() if n != self.into)]

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        picked = [row_index(names, g, role="merged", combiner=self.name) for g in self.groups]
        rest = [i for i in range(len(names)) if i not in picked]
        inner_gram = gram[picked][:, picked] if gram is not None else None
        merged = self.inner(matrix[picked], self.groups, gram=inner_gram)
        rest_names = [names[i] for i in rest]
        if self.into in rest_names:
            raise ConfigError(f"combiner 'merge': 'into' name {self.into!r} is already a group")
        stacked = torch.cat([matrix[rest], merged.gradient[None]], dim=0)
        outer = self.then(stacked, [*rest_names, self.into])
        return Combined(outer.gradient, {**merged.info, **outer.info})

    def linear_weights(self, names: Sequence[str]) -> list[float] | None:
        inner = self.inner.linear_weights(self.groups)
        if inner is None:
            return None
        rest_names = [n for n in names if n not in self.groups]
        outer = self.then.linear_weights([*rest_names, self.into])
        if outer is None:
            return None
        by_name = dict(zip(rest_names, outer[:-1]))
        by_name.update({g: w * outer[-1] for g, w in zip(self.groups, inner)})
        return [by_name[n] for n in names]

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "then": self.then.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.then.load_state_dict(state["then"])
