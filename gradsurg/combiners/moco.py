"""`moco`: multi-objective gradient correction (Fernando et al., ICLR 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, is_real, require
from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.combiners.tracking import TrackedRows


@COMBINERS.register
class MoCo(Combiner):
    """MGDA on tracked gradients, with the simplex weights moved by one projected step a step.

        Y      <- Y - beta (Y - J)                          (Y = J on the first step)
        lambda <- Proj_simplex(lambda - gamma (Y Y^T + rho I) lambda)   (lambda = 1/k at first)
        g      = k Y^T lambda

    Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient Bias in
    Multi-objective Learning: A Provably Convergent Approach" (ICLR 2023), Algorithm 1 with
    constant step sizes beta, gamma and regularization rho (defaults 0.5, 0.1, 0: LibMTL's).
    Y tracks the rows to cut the bias of MGDA's weights on stochastic gradients; lambda follows
    MGDA's min-norm problem by projected gradient steps instead of solving it. LibMTL also
    rescales each row to its loss value and uses softmax for the projection; neither is done
    here. The paper leaves Y's start open (LibMTL starts at 0); here Y starts at the first
    gradients, so one group keeps its gradient and identical rows give their sum.

    Not scale-free: the step gamma Y Y^T lambda grows with the squared gradient norms, so gamma
    needs to fit their size (a common positive scale changes the weights). Scaling: lambda is
    a convex combination (`mean`'s scale); the output is k times that. State (`state_dict`):
    Y by group name (k x n numbers), lambda and the names. Cost: per coordinate: k x n extra
    memory, one pass to update Y, and its Gramian.
    """

    name = "moco"
    shard_refusal = ("its k x n tracked gradients and their Gramian would have to be sharded "
                     "and reduced too (not implemented).")

    def __init__(self, *, beta: float = 0.5, gamma: float = 0.1, rho: float = 0.0) -> None:
        require(is_real(beta) and 0 < beta <= 1, self.name, "beta", "a number in (0, 1]", beta)
        require(is_real(gamma) and gamma > 0, self.name, "gamma", "a finite number > 0", gamma)
        require(is_real(rho) and rho >= 0, self.name, "rho", "a finite number >= 0", rho)
        self.beta, self.gamma, self.rho = float(beta), float(gamma), float(rho)
        self.tracked = TrackedRows(rate=self.beta, start="first")
        self.simplex = torch.zeros(0, dtype=torch.float64)

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        k = matrix.shape[0]
        tracked = self.tracked.update(matrix)
        tracked_gram = gramian(tracked)
        known = self.simplex.numel() == k
        lam = self.simplex if known else torch.full((k,), 1.0 / k, dtype=torch.float64)
        system = tracked_gram.cpu() + self.rho * torch.eye(k, dtype=torch.float64)
        self.simplex = project_to_simplex(lam - self.gamma * (system @ lam))
        info = {"moco/largest_weight": float(self.simplex.max()) if k else 0.0}
        return Combined(weighted_rows(k * self.simplex, tracked, tracked_gram), info)

    def resolve(self, names: list[str]) -> None:
        if names != self.names:  # other groups: the weights start again from 1/k
            self.simplex = torch.zeros(0, dtype=torch.float64)
        self.tracked.bind(names)

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracked.state_dict(), "weights": self.simplex.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = torch.as_tensor(state["weights"], dtype=torch.float64).cpu()
        self.tracked.load_state_dict(state)
        if weights.numel() not in (0, len(self.tracked.names)):
            raise ValueError(f"moco state: {weights.numel()} weights for "
                             f"{len(self.tracked.names)} groups")
        self.simplex = weights.clone()
        self.names = self.tracked.names  # the state's groups are the binding now


def project_to_simplex(point: Tensor) -> Tensor:
    """Euclidean projection onto {w >= 0, sum(w) = 1}, by sorting (Held, Wolfe & Crowder 1974).

    The projection is max(point - theta, 0) for the one theta that makes it sum to 1.
    """
    if point.numel() == 0 or not bool(torch.isfinite(point).all()):
        return torch.full_like(point, 1.0 / max(point.numel(), 1))
    point = point - point.max()  # the projection ignores a common shift; keeps the 1 visible
    ordered = torch.sort(point, descending=True).values
    cumulative = torch.cumsum(ordered, dim=0) - 1.0
    ranks = torch.arange(1, point.numel() + 1, dtype=point.dtype)
    count = int((ordered - cumulative / ranks > 0).sum())
    theta = cumulative[count - 1] / count
    return (point - theta).clamp_min(0)
