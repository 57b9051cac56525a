"""The alpha-fair step shared by Nash-MTL (alpha = 1) and FairGrad (any alpha > 0).

Both choose d = sum_i w_i g_i maximizing sum_i U(g_i . d) over a ball, U the alpha-fair
utility (log for alpha = 1, x^(1-alpha) / (1-alpha) otherwise); its optimality condition is

    G w = w^(-1/alpha)   (elementwise; G the Gramian),

Navon et al.'s "G alpha = 1 / alpha" for alpha = 1 and Ban & Ji's eq. 4. In the variables
x_i = w_i ||g_i|| (up to one common factor) it reads N x = c * x^(-1/alpha) on the cosine
matrix N, with c_i = (||g_i|| / max_j ||g_j||)^((1-alpha)/alpha): all 1 for alpha = 1, where
the direction does not depend on the rows' lengths at all. It is the stationarity condition of

    f(x) = 1/2 x^T N x - sum_i c_i phi(x_i),   phi'(x) = x^(-1/alpha),

strictly convex on x > 0, so it has one solution, found by Newton's method with a
backtracking line search (Boyd & Vandenberghe, "Convex Optimization", 9.5) instead of the
papers' sequence of convex programs (Nash-MTL, cvxpy) or least squares (FairGrad, scipy).
f has a minimizer exactly when 0 is not in the convex hull of the unit directions (a
Pareto-stationary point, where no step helps every group); that case is detected first with
the min-norm QP and gives weight 0 to every row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradsurg.combiners.qp import cosine_matrix, min_quadratic

#: Relative residual of N x = c x^(-1/alpha) at which Newton's method stops.
RESIDUAL_TOLERANCE = 1e-12


def fair_weights(
    gram: Tensor,
    *,
    alpha: float,
    precision: float,
    start: Tensor | None = None,
    max_iter: int = 200,
) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Weights w on `sum`'s scale, the solution x in cosine units (for a warm start), and facts.

    w_i = (sum_j ||g_j||) x_i / (||g_i|| sum_j x_j): the solution's direction, as a convex
    combination of the unit directions scaled by the rows' total length, so that identical
    rows, and orthogonal rows of equal length, give their plain sum. Zero rows have no
    utility to bargain with: weight 0, and they constrain nothing. `precision` is the norm
    below which the min-norm point of the unit directions counts as 0 (Pareto-stationary).
    """
    norms, cosines = cosine_matrix(gram)
    k = norms.numel()
    weights = torch.zeros(k, dtype=torch.float64)
    solution = torch.zeros(k, dtype=torch.float64)
    info = {"stationary": 0.0, "iterations": 0.0, "residual": 0.0}
    live = torch.nonzero(norms > 0).flatten()
    if live.numel() == 0:
        return weights, solution, info
    unit = cosines[live][:, live]
    hull, _ = min_quadratic(unit, torch.zeros(live.numel(), dtype=torch.float64), total=1.0)
    if math.sqrt(max(float(hull @ unit @ hull), 0.0)) <= precision:
        info["stationary"] = 1.0
        return weights, solution, info
    relative = norms[live] / norms[live].max()
    coefficients = (relative ** ((1.0 - alpha) / alpha)).clamp(1e-300, 1e300)
    if start is not None and bool((start[live] > 0).all()):
        x = start[live].to(torch.float64).clone()
    else:
        x = coefficients ** (alpha / (1.0 + alpha))  # the solution when the rows are orthogonal
    x, iterations, residual = _newton(unit, coefficients, alpha, x, max_iter)
    solution[live] = x
    total = float(norms[live].sum())
    weights[live] = total * (x / x.sum()) / norms[live]
    info["iterations"], info["residual"] = float(iterations), residual
    return weights, solution, info


def _newton(
    unit: Tensor, coefficients: Tensor, alpha: float, x: Tensor, max_iter: int
) -> tuple[Tensor, int, float]:
    """Minimize f (see the module docstring) from x > 0; the point, iterations and residual.

    The Newton step dx is taken multiplicatively, x <- x exp(t dx / x): the same first-order
    move, but x stays positive without a boundary rule, and a coordinate whose solution lies
    orders of magnitude below its start (x^(-1/alpha) is steep there) gets there in a few
    steps. t halves until f decreases enough (Armijo) or, near the solution where f's changes
    drown in rounding, the residual does.
    """
    power = 1.0 - 1.0 / alpha

    def objective(point: Tensor) -> float:
        utility = torch.log(point) if alpha == 1.0 else point**power / power
        return float(0.5 * point @ unit @ point - coefficients @ utility)

    def relative_residual(point: Tensor) -> tuple[Tensor, Tensor, float]:
        pull = coefficients * point ** (-1.0 / alpha)
        gradient = unit @ point - pull
        return pull, gradient, float((gradient.abs() / pull).max())

    pull, gradient, residual = relative_residual(x)
    for iteration in range(1, max_iter + 1):
        if residual <= RESIDUAL_TOLERANCE or not math.isfinite(residual):
            return x, iteration - 1, residual
        hessian = unit + torch.diag(pull / (alpha * x))
        direction = (-torch.linalg.solve(hessian, gradient) / x).clamp(-50.0, 50.0)
        slope = float(gradient @ (x * direction))
        if not math.isfinite(slope) or slope >= 0:
            return x, iteration, residual
        value, t = objective(x), 1.0
        while t > 1e-12:
            candidate = x * torch.exp(t * direction)
            new_pull, new_gradient, new_residual = relative_residual(candidate)
            if objective(candidate) <= value + 0.25 * t * slope or new_residual < residual / 2:
                break
            t /= 2
        else:  # no decrease representable: x is as good as it gets
            return x, iteration, residual
        x, pull, gradient, residual = candidate, new_pull, new_gradient, new_residual
    return x, max_iter, residual
