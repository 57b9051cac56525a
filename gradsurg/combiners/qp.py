"""Small quadratic programs on the k x k Gramian, shared by MGDA, UPGrad and CAGrad.

All three reduce to one problem on the float64 Gramian G = J J^T of the k rows of J:

    minimize  w^T G w   subject to  w >= lower  (and sum(w) == total, when given)

MGDA is the min-norm point of the rows' convex hull (lower = 0, total = 1); UPGrad projects a
row onto the dual cone of the rows (lower = e_i, no total); CAGrad's inner step is MGDA on
shifted points. The solver is a primal active-set method (Nocedal & Wright, "Numerical
Optimization", 2nd ed., section 16.5): exact after finitely many steps in exact arithmetic, and
always returning a feasible point, so callers get finite weights even on degenerate input.

Row norms can differ by 40 orders of magnitude (1e-30 next to 1e15 in float32), so the problem
is solved in the variables v_i = w_i * ||g_i|| on the cosine matrix N = D^-1 G D^-1, whose
entries all lie in [-1, 1]: the scale of a row never enters a linear solve. Zero rows keep
v_i = w_i and a zero row/column in N (they do not change the objective).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Relative slack on the sign of a Lagrange multiplier before a bound is released.
MULTIPLIER_TOLERANCE = 1e-12


def cosine_matrix(gram: Tensor) -> tuple[Tensor, Tensor]:
    """The row norms d (float64, 0 for zero rows) and N = D^-1 G D^-1 (unit diagonal).

    N[i, j] is the cosine between rows i and j, clamped to [-1, 1]; rows and columns of zero
    rows are zero.
    """
    gram = gram.detach().to(device="cpu", dtype=torch.float64)
    gram = (gram + gram.T) / 2
    norms = gram.diagonal().clamp_min(0).sqrt()
    nonzero = norms > 0
    safe = torch.where(nonzero, norms, torch.ones_like(norms))
    cosines = (gram / safe[:, None] / safe[None, :]).clamp(-1.0, 1.0)
    cosines = cosines * (nonzero[:, None] & nonzero[None, :])
    cosines.diagonal().copy_(nonzero.to(torch.float64))
    return norms, cosines


def min_quadratic(
    gram: Tensor,
    lower: Tensor,
    *,
    total: float | None = None,
    start: Tensor | None = None,
    max_iter: int | None = None,
) -> tuple[Tensor, int]:
    """argmin_w w^T G w subject to w >= lower and, if `total` is given, sum(w) == total.

    Returns the float64 CPU weights and the number of active-set iterations. With `total`, it
    must be at least sum(lower). The result always satisfies the constraints (up to rounding
    in the sum); for a semidefinite G the minimizer may be non-unique, and one is returned.
    `start`, a feasible point (e.g. the solution of a nearby problem), warm-starts the search:
    its coordinates above `lower` begin off their bounds.
    """
    norms, cosines = cosine_matrix(gram)
    k = norms.numel()
    lower = lower.detach().to(device="cpu", dtype=torch.float64)
    if k == 0:
        return torch.zeros(0, dtype=torch.float64), 0
    top = norms.max()
    # scale per coordinate: v = w * scale, scale = ||g_i|| / max ||g||, or 1 for zero rows
    scale = torch.where(norms > 0, norms / top if top > 0 else norms, torch.ones_like(norms))
    equality = None if total is None else 1.0 / scale
    if start is not None:
        start = torch.maximum(start.detach().to(device="cpu", dtype=torch.float64), lower)
        start = start * scale
    v, iterations = _active_set(
        cosines,
        lower * scale,
        equality,
        None if total is None else float(total),
        max_iter if max_iter is not None else 10 * k + 20,
        start,
    )
    w = torch.maximum(v / scale, lower)
    if total is not None:
        # the equality holds up to rounding in v; restore it exactly on the mass above `lower`
        extra, mass = w - lower, max(float(total) - float(lower.sum()), 0.0)
        spread = extra / extra.sum() if float(extra.sum()) > 0 else torch.full_like(w, 1.0 / k)
        w = lower + mass * spread
    return w, iterations


def _active_set(
    matrix: Tensor,
    lower: Tensor,
    equality: Tensor | None,
    total: float | None,
    max_iter: int,
    start: Tensor | None = None,
) -> tuple[Tensor, int]:
    """min 1/2 x^T M x  s.t. x >= lower and (if given) equality . x == total; M is PSD.

    Primal active set: `free` marks the coordinates off their bound. Each iteration minimizes
    over the current face (bounds of the others held, the equality kept); if that point is
    feasible it is taken and a bound with a negative multiplier is released, otherwise the
    step stops at the first bound it hits, which joins the working set.
    """
    k = lower.numel()
    x = lower.clone()
    free = torch.zeros(k, dtype=torch.bool)
    if start is not None and bool((start > lower).any()):
        x, free = start.clone(), start > lower
    elif equality is not None:
        assert total is not None
        # start at the best vertex of the feasible simplex: lower + step_j e_j
        steps = max(total - float(equality @ lower), 0.0) / equality
        values = 2 * steps * (matrix @ lower) + steps * steps * matrix.diagonal()
        best = int(torch.argmin(values))
        x[best] += steps[best]
        free[best] = True
    for iteration in range(1, max_iter + 1):
        target, multiplier = _face_minimum(matrix, x, lower, free, equality, total)
        step = target - x
        blocking = free & (step < 0)
        if bool(blocking.any()):
            room = (x - lower).clamp_min(0)
            ratios = torch.full((k,), float("inf"), dtype=torch.float64)
            ratios[blocking] = room[blocking] / -step[blocking]
            j = int(torch.argmin(ratios))
            if float(ratios[j]) < 1.0:
                x = torch.maximum(x + float(ratios[j]) * step, lower)
                x[j] = lower[j]
                free[j] = False
                continue
        x = torch.maximum(target, lower)
        gradient = matrix @ x
        size = matrix.abs() @ x.abs()
        if equality is not None:
            gradient = gradient - multiplier * equality
            size = size + abs(multiplier) * equality.abs()
        negative = ~free & (gradient < -MULTIPLIER_TOLERANCE * k * size)
        if not bool(negative.any()):
            return x, iteration
        released = torch.where(negative, gradient / size, torch.zeros_like(gradient))
        free[int(torch.argmin(released))] = True
    return x, max_iter


def _face_minimum(
    matrix: Tensor,
    x: Tensor,
    lower: Tensor,
    free: Tensor,
    equality: Tensor | None,
    total: float | None,
) -> tuple[Tensor, float]:
    """Minimizer over the face where the non-free coordinates sit at their bounds.

    Solves the KKT system by least squares (SVD), which also covers singular faces: the
    objective is a squared norm, so the system is consistent and any solution is a minimizer.
    Returns the point and the multiplier of the equality (0 without one).
    """
    index = torch.nonzero(free).flatten()
    target = torch.where(free, x, lower)
    if index.numel() == 0:
        return target, 0.0
    fixed = ~free
    rhs = -(matrix[index][:, fixed] @ lower[fixed])
    block = matrix[index][:, index]
    if equality is None:
        solution = torch.linalg.lstsq(block, rhs[:, None], driver="gelsd").solution[:, 0]
        target[index] = solution
        return target, 0.0
    assert total is not None
    coefficients = equality[index]
    factor = float(coefficients.abs().max())
    border = coefficients / factor  # keeps the bordered system's entries of order one
    m = index.numel()
    system = torch.zeros(m + 1, m + 1, dtype=torch.float64)
    system[:m, :m] = block
    system[:m, m] = border
    system[m, :m] = border
    right = torch.zeros(m + 1, dtype=torch.float64)
    right[:m] = rhs
    right[m] = (total - float(equality[fixed] @ lower[fixed])) / factor
    solution = torch.linalg.lstsq(system, right[:, None], driver="gelsd").solution[:, 0]
    target[index] = solution[:m]
    # block x + border * nu = rhs  <=>  block x + fixed part = multiplier * equality
    return target, -float(solution[m]) / factor
