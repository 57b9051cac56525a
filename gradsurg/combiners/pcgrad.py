"""`pcgrad`: projecting conflicting gradients (Yu et al., 2020, "Gradient Surgery for MTL")."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting, SeededDraws


@COMBINERS.register
class PCGrad(SeededDraws, GramianWeighting):
    """Each group's gradient is projected off every other group's *original* gradient it conflicts
    with, the others visited in a random order; the projected gradients are summed.

        for i: g_i' = g_i; for j in shuffled(others):
            if g_i' . g_j < 0: g_i' <- g_i' - (g_i' . g_j / ||g_j||^2) g_j
        g = sum_i g_i'

    Every g_i' is a combination of the original rows, so the whole method runs on the k x k
    Gramian: row i of C holds g_i''s coefficients, and g_i' . g_j = C[i] @ Gram[:, j].
    The order comes from a seeded generator whose state is checkpointed.
    """

    name = "pcgrad"

    def __init__(self, *, seed: int = 0) -> None:
        self._seed(seed)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0]
        gram = gram.cpu()
        coefficients = torch.eye(k, dtype=torch.float64)
        conflicts = 0
        for i, j in shuffled_pairs(k, self.generator):
            dot = float(coefficients[i] @ gram[:, j])
            norm_sq = float(gram[j, j])
            if dot < 0 and norm_sq > 0:
                coefficients[i, j] -= dot / norm_sq
                conflicts += 1
        return coefficients.sum(dim=0), {"pcgrad/conflicts": float(conflicts)}


def shuffled_pairs(k: int, generator: torch.Generator) -> Iterator[tuple[int, int]]:
    """(i, j) for every row i and each other row j, the j's in a random order drawn per i from
    `generator`: the visiting order PCGrad and GradVac share (so GradVac's first step with
    zero targets is PCGrad's, seeded alike)."""
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for position in torch.randperm(len(others), generator=generator).tolist():
            yield i, others[position]
