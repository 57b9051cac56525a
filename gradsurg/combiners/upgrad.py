"""`upgrad`: unconflicting projection of gradients (Quinton & Rey, 2024, "Jacobian Descent")."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting
from gradsurg.combiners.qp import min_quadratic


@COMBINERS.register
class UPGrad(GramianWeighting):
    """Each group gradient projected onto the dual cone of all of them; the projections summed.

        cone   = {x : g_j . x >= 0 for every j}
        pi(g_i) = argmin_{x in cone} ||x - g_i||^2
        g      = sum_i pi(g_i)

    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (2024). By their
    Proposition 1, pi(g_i) = sum_j w_j g_j with w = argmin_{w >= e_i} w^T G w, a small
    non-negative QP on the k x k Gramian G (solved exactly, `gradsurg.combiners.qp`). Every
    projection lies in the cone, so the output conflicts with no group; rows that conflict
    with none are kept whole, so without any conflict the output is the plain `sum`. A zero
    row adds no constraint and projects to 0.

    Scaling: the paper averages the projections (1/k sum_i, the scale of `mean`); the output
    here is their sum, k times the paper's, to be comparable to `sum` like the other combiners.
    """

    name = "upgrad"

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0]
        total = torch.zeros(k, dtype=torch.float64)
        projected = 0
        iterations = 0
        for i in range(k):
            lower = torch.zeros(k, dtype=torch.float64)
            lower[i] = 1.0
            weights, steps = min_quadratic(gram, lower)
            total += weights
            iterations += steps
            projected += int(bool((weights > lower).any()))
        info = {
            "upgrad/projected": float(projected),  # rows that conflicted and were moved
            "upgrad/iterations": float(iterations),
        }
        return total.to(gram.device), info
