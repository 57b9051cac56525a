"""`sum` and `mean`: the plain combinations, exact and free (see `linear_weights`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gradsurg.combiners.base import Combined, Combiner


class Sum(Combiner):
    """g = sum_i g_i."""

    name = "sum"

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        return Combined(matrix.sum(dim=0), {})

    def linear_weights(self, names: Sequence[str]) -> list[float]:
        return [1.0] * len(names)


class Mean(Combiner):
    """g = (1/k) sum_i g_i."""

    name = "mean"

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        return Combined(matrix.mean(dim=0), {})

    def linear_weights(self, names: Sequence[str]) -> list[float]:
        return [1.0 / len(names)] * len(names)
