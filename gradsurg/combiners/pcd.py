"""`pcd`: Priority-Constrained Descent (TMLR 2026): follow a primary group, guarantee the others
a fraction of their progress."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting, is_real, require, row_index
from gradsurg.errors import ConfigError

#: A constraint counts as met when violated by at most this times the largest squared norm.
SLACK_TOLERANCE = 1e-9


@COMBINERS.register
class PCD(DtypeAwareWeighting):
    """The primary group's gradient, moved as little as possible so that every other group keeps
    a fraction tau of the progress its own normalized gradient would make.

        s_i = 1 / sqrt(v_i + eps),  v_i = bias-corrected EMA (decay beta) of ||g_i||^2
        d   = argmin_d 1/2 ||d - s_p g_p||^2  s.t.  (s_j g_j) . d >= tau_j ||s_j g_j||^2  (j != p)
        g   = k ||g_p|| d / ||d||

    "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
    Multi-Objective Optimization" (TMLR 2026, arXiv 2606.29521); torchjd 0.18's `PCD`. The QP
    is solved exactly on the k x k Gramian by a dual active-set method (Goldfarb & Idnani 1983
    for an identity Hessian): d = s_p g_p + sum_j mu_j s_j g_j with KKT multipliers mu >= 0,
    all inner products read from the Gramian. The paper's code enumerates working sets
    (exponential in k); both give the same minimizer. With tau = 0 and two groups, d is the
    primary gradient projected off the other's when they conflict: `project` with the primary
    as target, renormalized. `primary` names the followed group (torchjd: the first row; here
    too when it is not given). `tau` is one number or a `{group: tau}` mapping over all the
    other groups.

    Special cases as torchjd: g_p = 0 gives 0; constraints that cannot all hold (two opposite
    secondary gradients) are dropped and the output is k g_p; a direction that is 0 up to the
    rounding of rows in the input's dtype gives 0; a non-finite Gramian gives nan and leaves the
    averages alone. Differences: the output is k times torchjd's (rescaled to k ||g_p||, on
    `sum`'s scale like the other combiners: one group gives its gradient, k identical rows
    their sum), and the moving average and its bias correction are kept per group name (a
    group seen for the first time starts fresh; torchjd resets all when the row count
    changes). State (`state_dict`): the averages and step counts by group name.
    """

    name = "pcd"

    def __init__(self, *, primary: str | None = None, tau: float | Mapping[str, float] = 0.02,
                 beta: float = 0.999, eps: float = 1e-8) -> None:
        require(primary is None or isinstance(primary, str), self.name, "primary",
                "a loss group name", primary)
        if isinstance(tau, Mapping):
            for group, value in tau.items():
                require(isinstance(group, str) and is_real(value) and 0 <= value <= 1, self.name,
                        f"tau[{group!r}]", "a number in [0, 1]", value)
            if primary is not None and primary in tau:
                raise ConfigError(f"combiner 'pcd': tau names the primary group {primary!r}; "
                                  "it has no constraint")
            self.tau: float | dict[str, float] = {g: float(v) for g, v in tau.items()}
        else:
            require(is_real(tau) and 0 <= tau <= 1, self.name, "tau", "a number in [0, 1] or a "
                    "{group: tau} mapping", tau)
            self.tau = float(tau)
        require(is_real(beta) and 0 <= beta < 1, self.name, "beta", "a number in [0, 1)", beta)
        require(is_real(eps) and eps >= 0, self.name, "eps", "a number >= 0", eps)
        self.primary, self.beta, self.eps = primary, float(beta), float(eps)
        self.averages = torch.zeros(0, dtype=torch.float64)  # EMA of ||g_i||^2, by row
        self.steps = torch.zeros(0, dtype=torch.int64)  # updates of each average

    def group_names(self) -> list[str]:
        named = [self.primary] if self.primary is not None else []
        return named + (list(self.tau) if isinstance(self.tau, dict) else [])

    def resolve(self, names: list[str]) -> None:
        self.row = 0 if self.primary is None else row_index(names, self.primary, role="primary",
                                                            combiner=self.name)
        taus = torch.full((len(names),), 0.0, dtype=torch.float64)
        for i, group in enumerate(names):
            if i == self.row:
                continue
            if isinstance(self.tau, dict):
                if group not in self.tau:
                    raise ConfigError(f"combiner 'pcd': tau gives no value for group {group!r} "
                                      f"(groups {names}, primary {names[self.row]!r})")
                taus[i] = self.tau[group]
            else:
                taus[i] = self.tau
        if isinstance(self.tau, dict):
            for group in self.tau:
                row_index(names, group, role="tau", combiner=self.name)
        self.taus = taus
        old = {name: index for index, name in enumerate(self.names or [])}
        averages = torch.zeros(len(names), dtype=torch.float64)
        steps = torch.zeros(len(names), dtype=torch.int64)
        for i, group in enumerate(names):
            if group in old and old[group] < self.averages.numel():
                averages[i], steps[i] = self.averages[old[group]], self.steps[old[group]]
        self.averages, self.steps = averages, steps

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        gram = gram.detach().to(device="cpu", dtype=torch.float64)
        k = gram.shape[0]
        info = {"pcd/active": 0.0, "pcd/infeasible": 0.0, "pcd/iterations": 0.0}
        if not bool(torch.isfinite(gram).all()):
            return torch.full((k,), math.nan, dtype=torch.float64), info
        gram = (gram + gram.T) / 2
        squares = gram.diagonal().clamp_min(0)
        scales = self._update(squares)
        p = self.row
        weights = torch.zeros(k, dtype=torch.float64)
        if squares[p] == 0:
            return weights, info
        # the primary first, then the others in their row order
        order = [p] + [i for i in range(k) if i != p]
        normalized = (gram * torch.outer(scales, scales))[order][:, order]
        precision = 10 * torch.finfo(dtype).eps
        mu, feasible, iterations = priority_qp(normalized, self.taus[order[1:]],
                                               dependence=max(1e-9, precision))
        coefficients = torch.cat([torch.ones(1, dtype=torch.float64), mu])
        direction_sq = float(coefficients @ normalized @ coefficients)
        size_sq = float(coefficients.abs() @ normalized.diagonal().clamp_min(0).sqrt()) ** 2
        info = {"pcd/active": float((mu > 0).sum()), "pcd/infeasible": float(not feasible),
                "pcd/iterations": float(iterations)}
        if direction_sq <= precision * size_sq:  # d = 0 up to the rounding of the Gramian
            return weights, info
        weights[order] = coefficients * scales[order]
        weights *= k * math.sqrt(float(squares[p]) / direction_sq)
        return weights, info

    def _update(self, squares: Tensor) -> Tensor:
        """Fold this step's squared norms into the averages; the scales 1 / sqrt(v + eps)."""
        self.averages = self.beta * self.averages + (1 - self.beta) * squares
        self.steps = self.steps + 1
        corrected = self.averages / (1 - self.beta ** self.steps.to(torch.float64))
        roots = (corrected + self.eps).sqrt()
        # a zero average: the gradient has always been 0, its scale is irrelevant
        return torch.where(roots > 0, 1 / torch.where(roots > 0, roots, 1.0), 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names or []), "averages": self.averages.clone(),
                "steps": self.steps.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        averages = torch.as_tensor(state["averages"], dtype=torch.float64).cpu()
        steps = torch.as_tensor(state["steps"], dtype=torch.int64).cpu()
        if averages.shape != (len(names),) or steps.shape != (len(names),):
            raise ValueError(f"pcd state: {tuple(averages.shape)} averages and "
                             f"{tuple(steps.shape)} step counts for {len(names)} groups")
        self.averages, self.steps = averages.clone(), steps.clone()
        if names:  # the loaded groups are the binding now
            self.names = names
            self.resolve(names)


def priority_qp(gram: Tensor, taus: Tensor, *, dependence: float = 1e-9,
                max_iter: int | None = None) -> tuple[Tensor, bool, int]:
    """Multipliers mu >= 0 of  min_d 1/2 ||d - g_0||^2  s.t.  g_j . d >= taus_j ||g_j||^2, j >= 1.

    `gram`: the float64 Gramian of g_0, g_1, ...; the minimizer is d = g_0 + sum_j mu_j g_j.
    Returns (mu, feasible, iterations); infeasible constraints give mu = 0.

    Dual active set: start from the unconstrained minimizer (mu = 0) and add the most
    violated constraint p; moving along it changes mu_p by +t and the active multipliers by
    -t r, where sum_j r_j g_j is g_p's projection on the active gradients, so the active
    constraints stay tight. The step stops either when constraint p holds (p joins) or when an
    active multiplier reaches 0 (that constraint leaves, and p is tried again). A g_p that is
    a combination of the active gradients (residual below `dependence` times ||g_p||^2) with
    no multiplier to release means no point meets them all.
    """
    m = gram.shape[0] - 1
    mu = torch.zeros(max(m, 0), dtype=torch.float64)
    if m <= 0:
        return mu, True, 0
    limit = max_iter if max_iter is not None else 10 * (m + 1)
    others = gram[1:, 1:]
    # slack_j(mu) = g_j . d - taus_j ||g_j||^2 = offset_j + (others @ mu)_j
    offset = gram[1:, 0] - taus * others.diagonal()
    tolerance = SLACK_TOLERANCE * max(float(gram.diagonal().max()), torch.finfo(torch.float64).tiny)
    active: list[int] = []
    iterations = 0
    while iterations < limit:
        slack = offset + others @ mu
        slack[active] = 0.0  # tight by construction
        p = int(torch.argmin(slack))
        if float(slack[p]) >= -tolerance:
            break
        violation = float(slack[p])
        while iterations < limit:
            iterations += 1
            if active:
                block = others[active][:, active]
                r = torch.linalg.solve(block, others[active, p])
                residual = float(others[p, p] - others[p, active] @ r)
                shrinking = r > 0
                ratios = torch.where(shrinking, mu[active] / torch.where(shrinking, r, 1.0),
                                     math.inf)
                leaving = int(torch.argmin(ratios))
                partial = float(ratios[leaving])
            else:
                r = torch.zeros(0, dtype=torch.float64)
                residual, leaving, partial = float(others[p, p]), -1, math.inf
            independent = residual > dependence * float(others[p, p])
            full = -violation / residual if independent else math.inf
            step = min(full, partial)
            if math.isinf(step):
                return torch.zeros(m, dtype=torch.float64), False, iterations
            if active:
                mu[active] -= step * r
            mu[p] += step
            if full <= partial:
                active.append(p)
                break
            mu[active[leaving]] = 0.0
            del active[leaving]
            violation = float(offset[p] + others[p] @ mu)
    return mu.clamp_min(0), True, iterations
