"""`merge`: combine some groups into one row with one combiner, then the rest with another."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, refuse_multi_batch, row_index
from gradsurg.errors import ConfigError


@COMBINERS.register
class Merge(Combiner):
    """Compose combiners: `inner` turns the rows of `groups` into one row named `into`, and
    `then` combines that row with the remaining groups.

    Example: project `final` against `sd`, then add an auxiliary group plainly:
        Merge(groups=["final", "sd"], inner=Project(target="final", reference="sd"),
              into="main", then=Sum())
    """

    name = "merge"
    shard_refusal = ("its outer combiner reads the Gramian of the merged row, which it "
                     "computes from the local columns (not implemented for shards).")
    nested = ("inner", "then")

    def __init__(
        self, *, groups: Sequence[str], inner: Combiner, into: str, then: Combiner
    ) -> None:
        if len(groups) < 1 or len(set(groups)) != len(groups):
            raise ConfigError(f"combiner 'merge': groups must be distinct names, got {groups}")
        self.groups = list(groups)
        refuse_multi_batch(inner, inside="merge", where="combiner.inner")
        refuse_multi_batch(then, inside="merge", where="combiner.then")
        self.inner = inner.bind(self.groups)  # its rows are the merged groups, known now
        self.into = into
        self.then = then

    def group_names(self) -> list[str]:
        return [*self.groups, *(n for n in self.then.group_names() if n != self.into)]

    def resolve(self, names: list[str]) -> None:
        self.picked = [row_index(names, g, role="merged", combiner=self.name)
                       for g in self.groups]
        self.rest = [i for i in range(len(names)) if i not in self.picked]
        rest_names = [names[i] for i in self.rest]
        if self.into in rest_names:
            raise ConfigError(f"combiner 'merge': 'into' name {self.into!r} is already a group")
        self.then.bind([*rest_names, self.into])

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        inner_gram = gram[self.picked][:, self.picked] if gram is not None else None
        merged = self.inner(matrix[self.picked], gram=inner_gram)
        stacked = torch.cat([matrix[self.rest], merged.gradient[None]], dim=0)
        outer = self.then(stacked)
        return Combined(outer.gradient, {**merged.info, **outer.info})

    def linear_weights(self) -> list[float] | None:
        inner = self.inner.linear_weights()
        outer = self.then.linear_weights()
        if inner is None or outer is None:
            return None
        weights = [0.0] * (len(self.rest) + len(self.picked))
        for i, w in zip(self.rest, outer[:-1]):
            weights[i] = w
        for i, w in zip(self.picked, inner):
            weights[i] = w * outer[-1]
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "then": self.then.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.then.load_state_dict(state["then"])
