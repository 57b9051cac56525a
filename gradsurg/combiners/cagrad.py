"""`cagrad`: conflict-averse gradient descent (Liu et al., NeurIPS 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, DtypeAwareWeighting
from gradsurg.combiners.qp import min_quadratic
from gradsurg.errors import ConfigError


@COMBINERS.register
class CAGrad(DtypeAwareWeighting):
    """The step in a ball around the mean gradient that most improves the worst-off group.

        g0 = (1/k) sum_i g_i,   phi = c^2 ||g0||^2,   g_w = sum_i w_i g_i
        w* = argmin_{w >= 0, sum(w) = 1}  g_w . g0 + sqrt(phi) ||g_w||
        d  = g0 + sqrt(phi) / ||g_w*|| * g_w*
        g  = k * d

    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning"
    (NeurIPS 2021), Algorithm 1: d is the maximizer of min_i g_i . d over the ball
    ||d - g0|| <= c ||g0||, found through the dual problem in w above. c = 0 is the plain
    `sum`; larger c trades average progress for the worst group's.

    Scaling: the output is k * d, on the scale of `sum` (identical rows g give k (1 + c) g).
    The paper's Algorithm 1 steps along d; its official code can also divide d by (1 + c^2)
    (or by 1 + c), a learning-rate rescaling not applied here.

    Solver: the dual objective is not a QP, but sqrt(x) = min_{t > 0} (x / t + t) / 2 turns it
    into a one-parameter family of them: for fixed t the best w is the point of the hull of
    the g_i nearest to -(t / c) g0 / ||g0|| (a min-norm QP on a shifted Gramian), and the
    optimum is the t with ||g_w(t)|| = t, found by bracketed root finding (the map is
    monotone). Everything runs on the k x k Gramian.

    Degenerate case: when the optimal g_w is 0 (0 is in the hull and no direction beats it),
    the formula for d is 0/0. Then every d in the ball with min_i g_i . d = 0 is optimal, and
    the one closest to g0 is taken: the projection of g0 onto the dual cone
    {d : g_i . d >= 0 for all i}, i.e. w >= 1/k minimizing w^T G w (info `cagrad/fallback`
    = 1). Numerically, g_w counts as 0 when ||g_w|| <= 8 sqrt(eps) sum_i w_i ||g_i||, eps that
    of the input's dtype: below that a norm taken through the Gramian is rounding noise
    (in float32, 3e-4 of the rows combined), or when it is below 1e-9 of the longest row, the
    solver's own resolution (`ZERO_NORM`); the fallback point is then also kept in the ball.
    """

    name = "cagrad"

    def __init__(self, *, c: float = 0.5) -> None:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c < 0:
            raise ConfigError(f"combiner 'cagrad': c must be a finite number >= 0, got {c!r}")
        self.c = float(c)

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
        return cagrad_weights(gram, c=self.c, precision=gramian_precision(dtype))


#: Below this norm (relative to the longest row) g_w is 0 for the solver: the bracket search
#: stops at 1e-12 and the min-norm QP leaves a residual of about that size, so a smaller g_w's
#: direction, which sets d, would be rounding noise (seen: d off by 7% of ||g0|| outside the
#: ball, rows 1e-6 and 1e-2 pointing opposite ways).
ZERO_NORM = 1e-9


def gramian_precision(dtype: torch.dtype) -> float:
    """Relative precision of a norm ||sum_i w_i g_i|| taken through the Gramian of rows in
    `dtype`: the Gramian's entries carry the dtype's rounding eps, so w^T G w is known to
    about eps (sum_i w_i ||g_i||)^2 and the norm to about sqrt(eps) (sum_i w_i ||g_i||)."""
    return 8 * torch.finfo(dtype).eps ** 0.5


def cagrad_weights(gram: Tensor, *, c: float, precision: float) -> tuple[Tensor, dict[str, float]]:
    """CAGrad's float64 weights from the Gramian; see `CAGrad`."""
    k = gram.shape[0]
    gram64 = gram.detach().to(device="cpu", dtype=torch.float64)
    gram64 = (gram64 + gram64.T) / 2
    info = {"cagrad/coefficient": 0.0, "cagrad/fallback": 0.0, "cagrad/solves": 0.0}
    top = float(gram64.diagonal().max().clamp_min(0)) if k else 0.0
    if top == 0.0 or c == 0.0:
        return torch.ones(k, dtype=torch.float64, device=gram.device), info
    unit = gram64 / top  # rows rescaled to a longest norm of 1; w is scale-free
    norms = unit.diagonal().clamp_min(0).sqrt()
    mean = torch.full((k,), 1.0 / k, dtype=torch.float64)
    mean_sq = float(mean @ unit @ mean)
    if mean_sq <= 0.0:  # g0 = 0: the ball is a point, d = g0 = 0
        return torch.ones(k, dtype=torch.float64, device=gram.device), info
    mean_norm = math.sqrt(mean_sq)
    along = (unit @ mean) / mean_norm  # g_i . g0 / ||g0||
    zeros = torch.zeros(k, dtype=torch.float64)
    evaluations = 0
    last: list[Tensor] = []  # the previous solution warm-starts the next, nearby problem

    def solve(t: float) -> tuple[Tensor, float]:
        nonlocal evaluations
        evaluations += 1
        shift = t / c  # squared distances to the point y = -shift * g0 / ||g0||
        shifted = unit + shift * (along[:, None] + along[None, :]) + shift * shift
        w, _ = min_quadratic(shifted, zeros, total=1.0, start=last[0] if last else None)
        last[:] = [w]
        return w, math.sqrt(max(float(w @ unit @ w), 0.0))

    def excess(t: float) -> float:
        return t - solve(t)[1]

    # excess(t) changes sign once on t > 0, from - to +, and excess(1) >= 0 (||g_w|| <= 1).
    # Walk down from 1 to find a negative value, then refine the bracket; none down to
    # 1e-12 means the optimal g_w is 0.
    hi, lo = 1.0, None
    while hi > 1e-12:
        value = excess(hi / 4)
        if value < 0:
            lo = hi / 4
            break
        hi /= 4
    root = hi if lo is None else _increasing_root(excess, lo, hi)
    w, norm = solve(root)
    info["cagrad/solves"] = float(evaluations)
    if norm <= max(precision * float(w @ norms), ZERO_NORM):  # g_w is 0 within precision
        info["cagrad/fallback"] = 1.0
        return (k * _fallback(unit, mean, c * mean_norm)).to(gram.device), info
    coefficient = c * mean_norm / norm  # sqrt(phi) / ||g_w||
    info["cagrad/coefficient"] = coefficient
    return (1.0 + k * coefficient * w).to(gram.device), info


def _fallback(unit: Tensor, mean: Tensor, radius: float) -> Tensor:
    """Weights of the projection of g0 onto the dual cone of the rows, kept in the ball.

    In an exactly degenerate problem the projection lies in the ball; when rounding decided
    the degeneracy, the point is pulled back onto the ball along the segment from g0.
    """
    projected, _ = min_quadratic(unit, mean)
    difference = projected - mean
    distance = math.sqrt(max(float(difference @ unit @ difference), 0.0))
    if distance > radius:
        return mean + difference * (radius / distance)
    return projected


def _increasing_root(f, lo: float, hi: float, *, tol: float = 1e-14, max_iter: int = 200) -> float:
    """A root of f in [lo, hi], where f changes sign at most once, from negative to positive.

    Returns lo if f(lo) >= 0 and hi if f(hi) <= 0. Otherwise regula falsi with the Illinois
    weight-halving, which keeps the bracket and converges superlinearly on the piecewise-smooth
    f here, plus a bisection step whenever an iteration fails to halve the bracket.
    """
    f_lo = f(lo)
    if f_lo >= 0:
        return lo
    f_hi = f(hi)
    if f_hi <= 0:
        return hi
    side = 0
    for _ in range(max_iter):
        width = hi - lo
        if width <= tol:
            break
        t = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        if not lo < t < hi:
            t = (lo + hi) / 2
        value = f(t)
        if abs(value) <= tol:
            return t
        if value < 0:
            lo, f_lo = t, value
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = t, value
            if side == 1:
                f_lo /= 2
            side = 1
        if hi - lo > width / 2:  # slow progress: bisect once
            mid = (lo + hi) / 2
            value = f(mid)
            if abs(value) <= tol:
                return mid
            if value < 0:
                lo, f_lo = mid, value
            else:
                hi, f_hi = mid, value
            side = 0
    return (lo + hi) / 2
