"""`mgda`: the multiple-gradient descent direction (Désidéri 2012; Sener & Koltun 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, GramianWeighting
from gradsurg.combiners.qp import min_quadratic


@COMBINERS.register
class MGDA(GramianWeighting):
    """The min-norm point of the convex hull of the group gradients, times k.

        w* = argmin_{w >= 0, sum(w) = 1} || sum_i w_i g_i ||^2
        g  = k * sum_i w*_i g_i

    Désidéri, "Multiple-gradient descent algorithm (MGDA) for multiobjective optimization"
    (C. R. Acad. Sci. Paris, 2012); Sener & Koltun, "Multi-Task Learning as Multi-Objective
    Optimization" (NeurIPS 2018). The min-norm point d satisfies g_i . d >= ||d||^2 for every
    i, so the output conflicts with no group; it is 0 exactly when some convex combination of
    the gradients vanishes (a Pareto-stationary point), e.g. when one group's gradient is 0.

    Scaling: the papers step along d itself, a convex combination (the scale of `mean`); the
    output here is k * d, so identical rows give their plain `sum`, like the other combiners.
    Sener & Koltun also normalize each gradient (by its norm or loss) before solving; that is
    left to the caller (no normalization here).

    The problem is solved exactly on the k x k Gramian (active set, `gradsurg.combiners.qp`)
    rather than by Sener & Koltun's Frank-Wolfe iterations, so the weights do not depend on
    an iteration budget.
    """

    name = "mgda"

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        k = gram.shape[0]
        weights, iterations = min_quadratic(gram, torch.zeros(k, dtype=torch.float64), total=1.0)
        gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
        largest = float(gram64.diagonal().max().clamp_min(0))
        norm_sq = max(float(weights @ gram64 @ weights), 0.0)
        info = {
            "mgda/support": float((weights > 0).sum()),
            # ||d|| / max_i ||g_i||: 0 at a Pareto-stationary point, 1 when one row is all
            "mgda/norm_ratio": (norm_sq / largest) ** 0.5 if largest > 0 else 0.0,
            "mgda/iterations": float(iterations),
        }
        return (k * weights).to(gram.device), info
