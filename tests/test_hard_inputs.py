"""The QP-based combiners on the inputs block-wise surgery produces: small blocks (a bias: more
groups than columns), nearly dependent rows, near copies (a row repeated, rescaled or negated,
up to 1e-12), Gramian condition numbers of 1e15 and (far) more.

Each is checked against cvxpy (Clarabel, tight tolerances) solving the method's problem in the
gradient space, never through the Gramian, and for independence of the row order. On such
inputs the interior-point reference is itself inexact (thin cones), so the check is the one
that cannot be fooled by a sloppy reference: ours is feasible and its objective is no worse
than cvxpy's (a strongly convex objective then bounds the distance to the true optimum);
where the problem is well posed (`wide`: more groups than columns, random rows) the points
must agree too. README's "Exactness on hard inputs" quotes the bounds asserted here.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsurg.combiners import MGDA, PCD, CAGrad, DualProj, UPGrad
from gradsurg.combiners.pcd import priority_qp
from gradsurg.combiners.qp import min_quadratic

pytestmark = pytest.mark.usefixtures("one_thread")

KINDS = ("wide", "dependent", "copies")
FEW = settings(max_examples=6, deadline=None)
#: Relative bounds (to sum_i ||g_i||, squared for objectives) asserted below; README says them.
FEASIBLE, OBJECTIVE, AGREE, ORDER = 1e-10, 1e-9, 1e-7, 1e-6


def hard_matrix(seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "wide":  # a bias-sized block: more groups than columns
        k, n = int(rng.integers(4, 9)), int(rng.integers(1, 4))
        m = rng.standard_normal((k, n))
    elif kind == "dependent":  # rank r < k, up to a relative 1e-13..1e-9
        k = int(rng.integers(3, 7))
        r, n = int(rng.integers(1, k)), int(rng.integers(k, 12))
        m = rng.standard_normal((k, r)) @ rng.standard_normal((r, n))
        m += 10.0 ** rng.uniform(-13, -9) * rng.standard_normal((k, n))
    else:  # near copies of two rows, some negated
        k, n = int(rng.integers(3, 7)), int(rng.integers(2, 10))
        base = rng.standard_normal((2, n))
        sign = rng.choice([1.0, 1.0, 1.0, -1.0], k)
        m = sign[:, None] * base[rng.integers(0, 2, k)] * rng.uniform(0.5, 2.0, (k, 1))
        m += 1e-12 * rng.standard_normal((k, n))
    return m * 10.0 ** rng.uniform(-2, 2, (k, 1))  # rows of different lengths


def solved(problem: cp.Problem) -> bool:
    """True when Clarabel reports an optimum (not an inaccurate one, not a failure)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-13, tol_gap_rel=1e-13,
                          tol_feas=1e-13)
        except cp.error.SolverError:
            return False
    return problem.status == cp.OPTIMAL


def units(m: np.ndarray) -> np.ndarray:
    return m / np.linalg.norm(m, axis=1)[:, None]


def cone_projection(m: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """argmin ||x - v|| over {x : g_i . x >= 0} (the same cone with unit rows), by cvxpy."""
    size = max(np.linalg.norm(v), 1e-300)
    x = cp.Variable(m.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - v / size)), [units(m) @ x >= 0])
    return x.value * size if solved(problem) else None


def check_projection(ours: np.ndarray, m: np.ndarray, point: np.ndarray,
                     reference: np.ndarray, kind: str, scale: float) -> None:
    assert (units(m) @ ours).min() >= -FEASIBLE * scale  # in the cone
    gap = np.sum((ours - point) ** 2) - np.sum((reference - point) ** 2)
    assert gap <= OBJECTIVE * scale**2  # no farther from the point than cvxpy's answer
    if kind == "wide":
        assert np.linalg.norm(ours - reference) <= AGREE * scale


def shuffled_output(make, m: np.ndarray, seed: int, **names) -> tuple[np.ndarray, np.ndarray]:
    """Output on the rows as given and on a random permutation of them (names travel along)."""
    group = [f"g{i}" for i in range(len(m))]
    order = np.random.default_rng(seed + 1).permutation(len(m))
    t = torch.from_numpy(m)
    out = make()(t, group).gradient.numpy()
    again = make()(t[order], [group[i] for i in order]).gradient.numpy()
    return out, again


def single_projection(m: np.ndarray, i: int) -> np.ndarray:
    """UPGrad's projection of row i: its QP w >= e_i on the Gramian, as UPGrad solves it."""
    lower = torch.zeros(len(m), dtype=torch.float64)
    lower[i] = 1.0
    weights, _ = min_quadratic(torch.from_numpy(m @ m.T), lower)
    return weights.numpy() @ m


@pytest.mark.parametrize("kind", KINDS)
@FEW
@given(seed=st.integers(0, 2**31))
def test_upgrad_on_hard_inputs(kind, seed):
    """The output is the sum of k projections; each is unique (the weights are not), so each
    is checked against its own cvxpy problem, and the output against their sum."""
    m = hard_matrix(seed, kind)
    scale = np.linalg.norm(m, axis=1).sum()
    out, again = shuffled_output(UPGrad, m, seed)
    assert np.linalg.norm(out - again) <= ORDER * scale
    singles = [single_projection(m, i) for i in range(len(m))]
    assert np.linalg.norm(out - sum(singles)) <= ORDER * scale
    for i, g in enumerate(m):
        reference = cone_projection(m, g)
        if reference is not None:
            check_projection(singles[i], m, g, reference, kind, scale)


@pytest.mark.parametrize("kind", KINDS)
@FEW
@given(seed=st.integers(0, 2**31))
def test_dualproj_on_hard_inputs(kind, seed):
    m = hard_matrix(seed, kind)
    scale = np.linalg.norm(m, axis=1).sum()
    out, again = shuffled_output(DualProj, m, seed)
    assert np.linalg.norm(out - again) <= ORDER * scale
    reference = cone_projection(m, m.sum(0))
    if reference is not None:
        check_projection(out, m, m.sum(0), reference, kind, scale)


@pytest.mark.parametrize("kind", KINDS)
@FEW
@given(seed=st.integers(0, 2**31))
def test_mgda_on_hard_inputs(kind, seed):
    """k times the min-norm point of the hull: the point is unique even where the weights are
    not; ours is no longer than cvxpy's (it is in the hull by construction)."""
    m = hard_matrix(seed, kind)
    k, scale = len(m), np.linalg.norm(m, axis=1).sum()
    out, again = shuffled_output(MGDA, m, seed)
    assert np.linalg.norm(out - again) <= ORDER * scale
    size = np.linalg.norm(m, axis=1).max()
    w = cp.Variable(k)
    problem = cp.Problem(cp.Minimize(cp.sum_squares((m / size).T @ w)), [w >= 0, cp.sum(w) == 1])
    if solved(problem):
        reference = k * (w.value @ m)
        assert np.sum(out**2) - np.sum(reference**2) <= OBJECTIVE * (k * scale) ** 2
        if kind == "wide":
            assert np.linalg.norm(out - reference) <= AGREE * k * scale


@pytest.mark.parametrize("kind", KINDS)
@FEW
@given(seed=st.integers(0, 2**31))
def test_cagrad_on_hard_inputs(kind, seed):
    """max_d min_i g_i . d over ||d - g0|| <= c ||g0||: ours (output / k) is in the ball and
    its worst progress is no lower than cvxpy's."""
    m = hard_matrix(seed, kind)
    k, scale = len(m), np.linalg.norm(m, axis=1).sum()
    out, again = shuffled_output(lambda: CAGrad(c=0.5), m, seed)
    assert np.linalg.norm(out - again) <= ORDER * scale
    mean = m.mean(0)
    radius = 0.5 * np.linalg.norm(mean)
    size = np.linalg.norm(m, axis=1).max()
    d, worst = cp.Variable(m.shape[1]), cp.Variable()
    problem = cp.Problem(cp.Maximize(worst), [(m / size) @ d >= worst,
                                              cp.norm(d - mean / size) <= radius / size])
    if solved(problem):
        ours = out / k
        assert np.linalg.norm(ours - mean) <= radius + FEASIBLE * scale
        assert (m @ ours).min() >= worst.value * size**2 - OBJECTIVE * scale**2


@pytest.mark.parametrize("kind", KINDS)
@FEW
@given(seed=st.integers(0, 2**31), tau=st.floats(0.0, 0.5))
def test_pcd_on_hard_inputs(kind, seed, tau):
    """The primary named, so the order of the other rows must not matter; the QP's d checked
    against cvxpy on the normalized rows (feasible, no farther from the primary, relative to
    the step's size). Constraints that only a step 1e3 times the primary's length would meet
    are declared infeasible (the primary is followed), as torchjd's dependence tolerance does."""
    m = hard_matrix(seed, kind)
    k, scale = len(m), np.linalg.norm(m, axis=1).sum()
    out, again = shuffled_output(lambda: PCD(primary="g0", tau=tau, eps=0.0), m, seed)
    assert np.linalg.norm(out - again) <= ORDER * scale
    unit = units(m)
    mu, feasible, _ = priority_qp(torch.from_numpy(unit @ unit.T),
                                  torch.full((k - 1,), tau, dtype=torch.float64))
    d = unit[0] + mu.numpy() @ unit[1:]
    if feasible:
        assert (unit[1:] @ d - tau).min() >= -FEASIBLE * k
    x = cp.Variable(m.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - unit[0])), [unit[1:] @ x >= tau])
    if solved(problem):
        size = np.linalg.norm(x.value)
        if not feasible:  # as torchjd: a point only far out counts as none (near-dependence)
            assert size >= 1e3, size
            return
        gap = np.sum((d - unit[0]) ** 2) - np.sum((x.value - unit[0]) ** 2)
        assert gap <= OBJECTIVE * (k + size) ** 2


def test_the_inputs_are_hard():
    """The generators do reach what the issue names: Gramian condition numbers of 1e15 and
    more (numerically singular), and more rows than columns."""
    for kind in ("dependent", "copies"):
        conditions = [np.linalg.cond(m @ m.T) for m in (hard_matrix(s, kind) for s in range(20))]
        assert min(conditions) >= 1e15, (kind, min(conditions))
    assert all(hard_matrix(s, "wide").shape[0] > hard_matrix(s, "wide").shape[1]
               for s in range(20))
