"""`modo`: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen,
NeurIPS 2023)."""

from __future__ import annotations

from torch import Tensor

from gradsurg.combiners.base import COMBINERS, is_real, require
from gradsurg.combiners.cross_batch import CrossBatchWeighting
from gradsurg.combiners.moco import project_to_simplex


@COMBINERS.register
class MoDo(CrossBatchWeighting):
    """One projected step of MGDA's weights a step, on two batches' cross matrix:

        lambda <- Proj_simplex(lambda - gamma (J1 J2^T + rho I) lambda)   (lambda = 1/k at first)
        g      = k J3^T lambda

    Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective Learning:
    Optimization, Generalization and Conflict-Avoidance" (NeurIPS 2023), Algorithm 1: the
    weights' gradient J1 J2^T lambda is unbiased only because batches 1 and 2 are independent
    draws, and the step uses a third (the official code's `three_grads`, LibMTL's and
    torchjd's three-batch example). rho is the l2 regularization of the weights' problem.
    Defaults gamma 0.1, rho 0.1 (torchjd's).

    Not scale-free: the step gamma A lambda grows with the squared gradient norms, so gamma
    must fit their size. Needs three batches per step (`Surgery.backward([l1, l2, l3])`).
    State: lambda by group name. Cost: three batches' backward passes per step; the cross
    matrix is a block of the stacked Gramian.
    """

    name = "modo"

    def __init__(self, *, gamma: float = 0.1, rho: float = 0.1) -> None:
        require(is_real(gamma) and gamma > 0, self.name, "gamma", "a finite number > 0", gamma)
        require(is_real(rho) and rho >= 0, self.name, "rho", "a finite number >= 0", rho)
        super().__init__()
        self.gamma, self.rho = float(gamma), float(rho)

    def step(self, cross: Tensor, kept: Tensor) -> tuple[Tensor, Tensor]:
        lam = project_to_simplex(kept - self.gamma * (cross @ kept + self.rho * kept))
        return lam, lam
