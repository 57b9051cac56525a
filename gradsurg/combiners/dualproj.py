"""`dualproj`: the summed gradient projected onto the dual cone of the group gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting
from gradsurg.combiners.qp import min_quadratic


@COMBINERS.register
class DualProj(GramianWeighting):
    """The plain sum, moved to the nearest direction that conflicts with no group.

        cone = {x : g_j . x >= 0 for every j}
        g    = argmin_{x in cone} ||x - sum_i g_i||^2

    The projection of Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning"
    (NeurIPS 2017, eq. 11), applied to all k groups at once (torchjd's `DualProj`). By Quinton
    & Rey ("Jacobian Descent", 2024, Proposition 1) the projection of J^T u is J^T w with
    w = argmin_{w >= u} w^T G w; here u = 1 (the sum), a small QP on the k x k Gramian solved
    exactly (`gradsurg.combiners.qp`). Without conflict the output is the plain sum.

    Scaling: torchjd projects the mean (u = 1/k); the output here is k times that, on `sum`'s
    scale. Cost: the Gramian and one k-variable QP per step.
    """

    name = "dualproj"

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        ones = torch.ones(gram.shape[0], dtype=torch.float64)
        weights, iterations = min_quadratic(gram, ones)
        info = {
            "dualproj/projected": float(bool((weights > ones).any())),
            "dualproj/iterations": float(iterations),
        }
        return weights.to(gram.device), info
