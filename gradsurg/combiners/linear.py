"""`sum` and `mean`: the plain combinations, exact and free (see `linear_weights`)."""

from __future__ import annotations

from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner


@COMBINERS.register
class Sum(Combiner):
    """g = sum_i g_i."""

    name = "sum"
    exact_on_shards = True  # column by column

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        return Combined(matrix.sum(dim=0), {})

    def linear_weights(self) -> list[float]:
        return [1.0] * len(self.names or [])


@COMBINERS.register
class Mean(Combiner):
    """g = (1/k) sum_i g_i."""

    name = "mean"
    exact_on_shards = True  # column by column

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        return Combined(matrix.mean(dim=0), {})

    def linear_weights(self) -> list[float]:
        k = len(self.names or [])
        return [1.0 / k] * k
