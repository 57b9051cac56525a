"""`fairgrad`: alpha-fair resource allocation between groups (Ban & Ji, ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting, is_real, require
from gradsurg.combiners.cagrad import gramian_precision
from gradsurg.combiners.fair_utility import fair_weights


@COMBINERS.register
class FairGrad(DtypeAwareWeighting):
    """The step maximizing the groups' alpha-fair utility of their own progress.

        d* = argmax_{||d|| <= eps} sum_i (g_i . d)^(1 - alpha) / (1 - alpha)
        d* = sum_i w_i g_i  with  G w = w^(-1/alpha)   (elementwise)

    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning" (ICML 2024), eq. 4 and
    Algorithm 1. alpha -> 0 approaches the plain sum (utilitarian), alpha = 1 is Nash-MTL's
    proportional fairness (`nash_mtl`), alpha -> infinity max-min fairness. The default 2.0 is
    the authors' setting in their released QM9 script. The system is solved by Newton's
    method on the strictly convex potential whose gradient it is
    (`gradsurg.combiners.fair_utility`) instead of the authors' scipy least squares.

    Scaling: the paper steps along d* as solved, whose length depends on alpha and on the
    rows' scale in a way not comparable to `sum`. Here the weights are normalized so that
    sum_i w_i ||g_i|| = sum_i ||g_i||; the direction is the paper's, identical rows give their
    plain sum, and scaling every row by c scales the output by c. 0 in the convex hull of the
    unit directions gives 0 (info `fairgrad/stationary`); zero rows get weight 0. Stateless.

    Accuracy: on 200 random problems per alpha (k = 2-4 Gaussian rows, norms up to 1e6
    apart) the solve reached a 1e-12 relative residual on all of them for alpha = 0.5, 1, 2;
    3 (alpha = 5), 12 (alpha = 20) and 118 (alpha = 0.1) stopped at the 200-iteration cap
    short of it (the steep x^(-1/alpha) makes the system badly graded); `fairgrad/residual`
    reports the residual reached.
    Cost: the Gramian, one min-norm QP and a Newton solve (k x k) per step.
    """

    name = "fairgrad"

    def __init__(self, *, alpha: float = 2.0) -> None:
        require(is_real(alpha) and alpha > 0, self.name, "alpha", "a finite number > 0", alpha)
        self.alpha = float(alpha)

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        precision = gramian_precision(dtype)
        weights, _, facts = fair_weights(gram, alpha=self.alpha, precision=precision)
        return weights.to(gram.device), {f"fairgrad/{key}": v for key, v in facts.items()}
