"""Each combiner against an independent reference of its paper's formula, written on the
vectors themselves in float64 (numpy, scipy, or the paper's loop), and the properties that
define that one combiner (the properties every combiner shares: test_combiner_properties.py;
torchjd's implementations: test_combiner_torchjd.py). `pcd`, `krum`, `trimmed_mean`,
`cr_mogm`, `excess_mtl` and `blockwise` have their own files. Stateful and random methods
are compared on fresh instances with the same seed."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from combiner_checks import (
    as64,
    assert_conflicts_with_no_group,
    assert_within_summation_bound,
    cosine,
    cosine_condition,
    examples,
    floor,
    min_norm_reference,
    names_for,
    normalized,
    row_scale,
    run,
    simplex_projection,
    tolerance,
    vector_tolerance,
    well_posed,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import gradient_matrices, matrix_sequences, ordinary_matrices, spread_matrices

from gradsurg.combiners import (
    COMBINERS,
    DBMTL,
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    GradVac,
    Mean,
    Merge,
    MoCo,
    NashMTL,
    PCGrad,
    Project,
    Sum,
    UPGrad,
    gramian,
)
from gradsurg.combiners.project import projection_coefficient
from gradsurg.combiners.qp import min_quadratic

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems


# ---- sum and mean --------------------------------------------------------------------------


@given(gradient_matrices())
def test_sum_is_the_row_sum(matrix):
    out = Sum()(matrix, names_for(matrix)).gradient
    assert out.dtype == matrix.dtype
    assert_within_summation_bound(out, matrix.to(torch.float64).sum(0), matrix)


@given(gradient_matrices())
def test_mean_is_the_row_sum_over_k(matrix):
    out = Mean()(matrix, names_for(matrix)).gradient
    assert out.dtype == matrix.dtype
    expected = matrix.to(torch.float64).sum(0) / matrix.shape[0]
    assert_within_summation_bound(out, expected, matrix)


# ---- project -------------------------------------------------------------------------------


def project_reference(matrix: np.ndarray, t: int, r: int) -> np.ndarray:
    """Direct vector-space GEM projection in float64: no Gramian, no rescaling."""
    rows = [row.copy() for row in matrix]
    dot = rows[t] @ rows[r]
    if dot < 0 and rows[r] @ rows[r] > 0:
        rows[t] = rows[t] - dot / (rows[r] @ rows[r]) * rows[r]
    return np.sum(rows, axis=0)


def projected_target(matrix: torch.Tensor, t: int, r: int) -> np.ndarray:
    """g_t' from the combiner's projection coefficient, in float64."""
    coefficient = projection_coefficient(gramian(matrix), t, r)
    m = matrix.to(torch.float64).numpy()
    return m[t] - coefficient * m[r]


@st.composite
def project_cases(draw, matrices=None):
    matrix = draw(matrices if matrices is not None else gradient_matrices(min_rows=2))
    k = matrix.shape[0]
    t = draw(st.integers(0, k - 1))
    r = draw(st.sampled_from([j for j in range(k) if j != t]))
    return matrix, t, r


@given(project_cases())
def test_project_leaves_no_conflict_with_the_reference(case):
    matrix, t, r = case
    m = matrix.to(torch.float64).numpy()
    target = projected_target(matrix, t, r)
    scale = np.linalg.norm(m[t]) * np.linalg.norm(m[r])
    assert target @ m[r] >= -vector_tolerance(matrix.dtype) * scale


@given(project_cases(ordinary_matrices(min_rows=2)))
def test_project_matches_the_vector_reference(case):
    matrix, t, r = case
    m = matrix.to(torch.float64).numpy()
    dot = m[t] @ m[r]
    assume(abs(dot) > 1e-3 * np.linalg.norm(m[t]) * np.linalg.norm(m[r]))  # clear sign
    out = Project(target=f"g{t}", reference=f"g{r}")(matrix, names_for(matrix)).gradient
    expected = project_reference(m, t, r)
    scale = np.abs(m).sum(0).max() + 1e-300
    bound = vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(out.to(torch.float64).numpy() - expected).max() <= bound


@given(project_cases(ordinary_matrices(min_rows=2)))
def test_project_is_the_plain_sum_without_conflict(case):
    matrix, t, r = case
    m = matrix.to(torch.float64).numpy()
    assume(m[t] @ m[r] > 1e-3 * np.linalg.norm(m[t]) * np.linalg.norm(m[r]))
    combined = Project(target=f"g{t}", reference=f"g{r}")(matrix, names_for(matrix))
    assert combined.info["project/fired"] == 0.0
    expected = matrix.to(torch.float64).sum(0)
    scale = matrix.abs().sum(0).max().item()
    error = (combined.gradient.to(torch.float64) - expected).abs().max().item()
    assert error <= vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)


@given(project_cases(ordinary_matrices(min_rows=2)))
def test_project_is_idempotent(case):
    matrix, t, r = case
    once = projected_target(matrix, t, r)
    again_matrix = matrix.to(torch.float64).clone()
    again_matrix[t] = torch.from_numpy(once)
    twice = projected_target(again_matrix, t, r)
    scale = np.linalg.norm(matrix[t].to(torch.float64).numpy()) + 1e-300
    bound = vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(twice - once).max() <= bound


@given(
    project_cases(ordinary_matrices(min_rows=2)),
    st.floats(1e-3, 1e3),
)
def test_project_ignores_the_reference_scale(case, factor):
    matrix, t, r = case
    scaled = matrix.clone()
    scaled[r] = scaled[r] * factor
    before = projected_target(matrix, t, r)
    after = projected_target(scaled, t, r)
    scale = np.linalg.norm(matrix[t].to(torch.float64).numpy()) + 1e-300
    bound = 10 * vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(after - before).max() <= bound


@given(project_cases(ordinary_matrices(min_rows=2)), st.floats(1e-3, 1e3))
def test_project_is_equivariant_to_a_common_positive_scale(case, factor):
    matrix, t, r = case
    combiner = Project(target=f"g{t}", reference=f"g{r}")
    out = combiner(matrix, names_for(matrix)).gradient.to(torch.float64)
    scaled = combiner(matrix * factor, names_for(matrix)).gradient.to(torch.float64)
    scale = factor * (matrix.abs().sum(0).max().item() + 1e-300)
    bound = 10 * vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert (scaled - factor * out).abs().max().item() <= bound


def test_project_fires_only_on_conflict_and_keeps_the_reference():
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    combined = Project(target="final", reference="sd")(matrix, ["final", "sd"])
    # g_t = (1, 0), g_r = (-1, 1): g_t' = (1, 0) + 0.5 (-1, 1) = (0.5, 0.5); output g_t' + g_r
    torch.testing.assert_close(combined.gradient, torch.tensor([-0.5, 1.5]))
    assert combined.info["project/fired"] == 1.0


# ---- merge ---------------------------------------------------------------------------------


def test_merge_projects_two_groups_then_sums_a_third():
    matrix = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    merge = Merge(groups=["final", "sd"], inner=Project(target="final", reference="sd"),
                  into="main", then=Sum())
    out = merge(matrix, ["final", "sd", "aux"])
    torch.testing.assert_close(out.gradient, torch.tensor([-0.5, 1.5, 5.0]))
    assert out.info["project/fired"] == 1.0


# ---- pcgrad --------------------------------------------------------------------------------


def pcgrad_reference(matrix: np.ndarray, seed: int) -> np.ndarray:
    """Yu et al.'s loop written on vectors, drawing the same orders as PCGrad(seed=...)."""
    generator = torch.Generator().manual_seed(seed)
    k = matrix.shape[0]
    projected = []
    for i in range(k):
        g = matrix[i].copy()
        others = [j for j in range(k) if j != i]
        for position in torch.randperm(len(others), generator=generator).tolist():
            other = matrix[others[position]]
            dot = g @ other
            if dot < 0 and other @ other > 0:
                g = g - dot / (other @ other) * other
        projected.append(g)
    return np.sum(projected, axis=0)


@given(ordinary_matrices(min_rows=2, max_rows=2))
def test_pcgrad_two_groups_matches_the_closed_form(matrix):
    m = matrix.to(torch.float64).numpy()
    g1, g2 = m
    dot = g1 @ g2
    assume(abs(dot) > 1e-3 * np.linalg.norm(g1) * np.linalg.norm(g2))
    expected = g1 + g2
    if dot < 0:
        expected = (g1 - dot / (g2 @ g2) * g2) + (g2 - dot / (g1 @ g1) * g1)
    out = PCGrad(seed=3)(matrix, names_for(matrix)).gradient.to(torch.float64).numpy()
    scale = np.abs(m).sum(0).max()
    bound = vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(out - expected).max() <= bound


@given(ordinary_matrices(min_rows=3, max_rows=5), st.integers(0, 2**31 - 1))
def test_pcgrad_matches_the_vector_loop_for_many_groups(matrix, seed):
    m = matrix.to(torch.float64).numpy()
    out = PCGrad(seed=seed)(matrix, names_for(matrix)).gradient.to(torch.float64).numpy()
    expected = pcgrad_reference(m, seed)
    scale = np.abs(m).sum(0).max() * 10
    bound = 10 * vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(out - expected).max() <= bound


# ---- mgda ----------------------------------------------------------------------------------


@examples(60)
@given(ordinary_matrices(max_rows=5))
def test_mgda_is_k_times_the_min_norm_point(matrix):
    m = as64(matrix)
    out = run(MGDA(), matrix)
    expected = matrix.shape[0] * min_norm_reference(m)
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * row_scale(m) * len(m)


@examples(60)
@given(gradient_matrices(min_rows=2))
def test_mgda_conflicts_with_no_group(matrix):
    """d . g_i >= ||d||^2 for the min-norm point d (output k d), so no product is negative."""
    products, out, allowance = assert_conflicts_with_no_group(MGDA(), matrix)
    k = matrix.shape[0]
    assert (products >= out @ out / k - allowance).all()


# ---- upgrad --------------------------------------------------------------------------------


def dual_cone_projection(m: np.ndarray, g: np.ndarray) -> np.ndarray:
    """argmin ||x - g|| over {x : m x >= 0} by enumerating the active constraints.

    The projection is the projection of g onto the null space of its active rows; every
    feasible candidate is a feasible point, so the closest one is the answer.
    """
    k = m.shape[0]
    scale = np.linalg.norm(m, axis=1) * np.linalg.norm(g)
    best, best_distance = None, math.inf
    for size in range(k + 1):
        for active in itertools.combinations(range(k), size):
            if size == 0:
                x = g.copy()
            else:
                rows = m[list(active)]
                x = g - rows.T @ np.linalg.lstsq(rows.T, g, rcond=None)[0]
            if (m @ x < -1e-9 * scale).any():
                continue
            if np.linalg.norm(x - g) < best_distance:
                best, best_distance = x, np.linalg.norm(x - g)
    assert best is not None
    return best


@examples(60)
@given(ordinary_matrices(max_rows=4, max_cols=8))
def test_upgrad_is_the_sum_of_dual_cone_projections(matrix):
    m = as64(matrix)
    # nearly dependent rows make a thin cone that a Gramian rounded to the dtype cannot see
    assume(cosine_condition(m) < (1e3 if matrix.dtype == torch.float32 else 1e8))
    expected = sum(dual_cone_projection(m, row) for row in m)
    out = run(UPGrad(), matrix)
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * row_scale(m) * len(m)


@examples(60)
@given(gradient_matrices(min_rows=2))
def test_upgrad_conflicts_with_no_group(matrix):
    assert_conflicts_with_no_group(UPGrad(), matrix)


@examples(60)
@given(ordinary_matrices(min_rows=2))
def test_upgrad_without_conflict_is_the_sum(matrix):
    m = np.abs(as64(matrix))  # non-negative rows never conflict
    out = run(UPGrad(), torch.from_numpy(m).to(matrix.dtype))
    assert np.abs(out - m.sum(0)).max() <= tolerance(matrix.dtype) * np.abs(m).sum(0).max()


# ---- imtl-g --------------------------------------------------------------------------------


def imtlg_reference(m: np.ndarray) -> np.ndarray:
    """The paper's closed form: alpha_{2:k} = g_1 U^T (D U^T)^-1, alpha_1 = 1 - sum, then the
    scaling documented in IMTLG: k alpha / sum|alpha|, signed for positive projections."""
    k = m.shape[0]
    unit = m / np.linalg.norm(m, axis=1)[:, None]
    if k == 1:
        alpha = np.ones(1)
    else:
        d = m[0] - m[1:]
        u = unit[0] - unit[1:]
        tail = np.linalg.solve((d @ u.T).T, (m[0] @ u.T))
        alpha = np.concatenate([[1 - tail.sum()], tail])
    g = alpha @ m
    sign = 1.0 if g @ unit[0] >= 0 else -1.0
    return sign * k * g / np.abs(alpha).sum()


@examples(60)
@given(spread_matrices())
def test_imtlg_matches_the_papers_closed_form(matrix):
    m = as64(matrix)
    out = run(IMTLG(), matrix)
    expected = imtlg_reference(m)
    bound = 10 * tolerance(matrix.dtype) * cosine_condition(m) * np.abs(expected).max()
    assert np.abs(out - expected).max() <= bound


@examples(60)
@given(spread_matrices(min_rows=2))
def test_imtlg_projections_onto_unit_directions_are_equal_and_positive(matrix):
    m = as64(matrix)
    out = run(IMTLG(), matrix)
    projections = (m / np.linalg.norm(m, axis=1)[:, None]) @ out
    assert projections.min() > 0
    spread = projections.max() - projections.min()
    assert spread <= 10 * tolerance(matrix.dtype) * cosine_condition(m) * projections.max()


@examples(60)
@given(spread_matrices(min_rows=2), st.lists(st.floats(1e-3, 1e3), min_size=5))
def test_imtlg_direction_ignores_each_rows_scale(matrix, factors):
    scaled = matrix * torch.tensor(factors[: matrix.shape[0]], dtype=matrix.dtype)[:, None]
    a, b = run(IMTLG(), matrix), run(IMTLG(), scaled)
    assert cosine(a, b) >= 1 - tolerance(matrix.dtype)


# ---- cagrad --------------------------------------------------------------------------------


def cagrad_reference(m: np.ndarray, c: float) -> tuple[np.ndarray | None, float]:
    """d from the dual problem over the simplex solved by SLSQP on the vectors, and the best
    value of min_i g_i . d over the ball (the primal, solved by SLSQP too)."""
    optimize = pytest.importorskip("scipy.optimize")
    size = row_scale(m)  # solve on rows of norm <= 1 (SLSQP's tolerances are absolute)
    m = m / size
    k, n = m.shape
    g0 = m.mean(axis=0)
    radius = c * np.linalg.norm(g0)

    def dual(w):
        gw = w @ m
        return gw @ g0 + radius * np.linalg.norm(gw)

    best = None
    for start in [np.full(k, 1.0 / k), *np.eye(k)]:
        result = optimize.minimize(
            dual,
            0.9 * start + 0.1 / k,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        if best is None or result.fun < best.fun:
            best = result
    gw = best.x @ m
    # SLSQP finds w to ~1e-8, so the direction of a short g_w is unreliable (and a zero g_w,
    # the degenerate optimum, leaves d undefined): then only the value is compared
    d = g0 + radius * gw / np.linalg.norm(gw) if np.linalg.norm(gw) > 1e-3 else None

    def negative_worst(z):  # z = (d, s): maximize s with g_i . d >= s inside the ball
        return -z[-1]

    primal = optimize.minimize(
        negative_worst,
        np.concatenate([g0, [(m @ g0).min()]]),
        method="SLSQP",
        constraints=[
            {"type": "ineq", "fun": lambda z: m @ z[:n] - z[-1]},
            {"type": "ineq", "fun": lambda z: radius**2 - np.sum((z[:n] - g0) ** 2)},
        ],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    worst = -primal.fun if d is None else max(-primal.fun, float((m @ d).min()))
    return (None if d is None else d * size), worst * size**2


@examples(30)
@given(ordinary_matrices(min_rows=2, max_rows=4, max_cols=8), st.sampled_from([0.2, 0.5, 0.9]))
def test_cagrad_matches_an_slsqp_reference(matrix, c):
    m = as64(matrix)
    assume(bool((np.linalg.norm(m, axis=1) > 0).all()))
    combined = CAGrad(c=c)(matrix, names_for(matrix))
    assume(combined.info["cagrad/fallback"] == 0.0)
    k = matrix.shape[0]
    d = combined.gradient.to(torch.float64).numpy() / k
    expected, best_worst = cagrad_reference(m, c)
    g0 = m.mean(axis=0)
    radius = c * np.linalg.norm(g0)
    scale = row_scale(m) ** 2
    slack = max(tolerance(matrix.dtype), 1e-6)
    # d is in the ball and as good for the worst group as the best point of the ball; d is a
    # weighted sum of rows held in the input's dtype, so it carries their rounding (k eps each)
    rounding = 8 * k * torch.finfo(matrix.dtype).eps * row_scale(m)
    assert np.linalg.norm(d - g0) <= radius * (1 + slack) + rounding
    assert (m @ d).min() >= best_worst - slack * scale
    if expected is not None:
        assert np.abs(d - expected).max() <= 1e-3 * row_scale(m)


@examples(60)
@given(ordinary_matrices(min_rows=2))
def test_cagrad_with_c_zero_is_the_sum(matrix):
    out = run(CAGrad(c=0.0), matrix)
    m = as64(matrix)
    assert np.abs(out - m.sum(0)).max() <= tolerance(matrix.dtype) * np.abs(m).sum(0).max()


@examples(60)
@given(gradient_matrices(min_rows=2), st.sampled_from([0.5, 1.0, 2.0]))
def test_cagrad_stays_in_the_ball_around_the_mean(matrix, c):
    m = as64(matrix)
    d = run(CAGrad(c=c), matrix) / matrix.shape[0]
    g0 = m.mean(axis=0)
    slack = 10 * tolerance(matrix.dtype) * row_scale(m)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) + slack


# ---- gradvac -------------------------------------------------------------------------------


class GradVacReference:
    """Wang et al.'s Algorithm 1 on vectors, drawing the same orders as GradVac(seed=...)."""

    def __init__(self, beta: float, seed: int) -> None:
        self.beta = beta
        self.generator = torch.Generator().manual_seed(seed)
        self.targets: np.ndarray | None = None

    def __call__(self, m: np.ndarray) -> np.ndarray:
        k = m.shape[0]
        if self.targets is None:
            self.targets = np.zeros((k, k))
        total = np.zeros(m.shape[1])
        for i in range(k):
            g = m[i].copy()
            others = [j for j in range(k) if j != i]
            for position in torch.randperm(len(others), generator=self.generator).tolist():
                j = others[position]
                phi = cosine(g, m[j])
                target = self.targets[i, j]
                if phi < target and target**2 < 1:  # a target of +-1 is out of reach
                    sine, target_sine = math.sqrt(1 - phi**2), math.sqrt(1 - target**2)
                    factor = (target * sine - phi * target_sine) / target_sine
                    g = g + np.linalg.norm(g) * factor / np.linalg.norm(m[j]) * m[j]
                self.targets[i, j] = (1 - self.beta) * target + self.beta * phi
            total += g
        return total


@examples(60)
@given(ordinary_matrices(min_rows=2), st.integers(0, 2**31 - 1))
def test_gradvac_first_step_is_pcgrad(matrix, seed):
    """The targets start at 0, where the vaccine is PCGrad's projection."""
    out = run(GradVac(seed=seed), matrix)
    expected = run(PCGrad(seed=seed), matrix)
    scale = np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * scale


@examples(30)
@given(matrix_sequences(), st.sampled_from([0.01, 0.5, 1.0]), st.integers(0, 2**31 - 1))
def test_gradvac_matches_the_vector_algorithm_over_steps(matrices, beta, seed):
    combiner, reference = GradVac(beta=beta, seed=seed), GradVacReference(beta, seed)
    for matrix in matrices:
        m = as64(matrix)
        out, expected = run(combiner, matrix), reference(m)
        scale = np.abs(m).sum(0).max() * 10
        assert np.abs(out - expected).max() <= 1e-8 * scale
    np.testing.assert_allclose(combiner.targets.numpy(), reference.targets, atol=1e-9)


def test_gradvac_pushes_towards_the_target_cosine():
    combiner = GradVac(beta=0.0, seed=0)
    combiner.load_state_dict(
        {
            "seed": 0,
            "generator": torch.Generator().manual_seed(0).get_state(),
            "names": ["a", "b"],
            "targets": torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64),
        }
    )
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    out = combiner(rows, ["a", "b"])
    assert out.info["gradvac/corrections"] == 2.0
    # each row rotated to cosine 0.5 with the other: g_a' = (1, 1/sqrt(3)), g_b' symmetric
    expected = torch.tensor([1 + 1 / math.sqrt(3), 1 + 1 / math.sqrt(3)], dtype=torch.float64)
    torch.testing.assert_close(out.gradient, expected)


# ---- the shared QP solver ------------------------------------------------------------------


@examples(60)
@given(gradient_matrices(), st.booleans())
def test_min_quadratic_returns_feasible_weights(matrix, simplex):
    k = matrix.shape[0]
    lower = torch.zeros(k, dtype=torch.float64) if simplex else torch.eye(k, dtype=torch.float64)[0]
    weights, _ = min_quadratic(gramian(matrix), lower, total=1.0 if simplex else None)
    assert torch.isfinite(weights).all()
    assert bool((weights >= lower).all())
    if simplex:
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


# ---- dualproj ------------------------------------------------------------------------------


@examples(25)
@given(ordinary_matrices(min_rows=2, max_rows=4, max_cols=8))
def test_dualproj_is_the_sum_projected_onto_the_dual_cone(matrix):
    m = as64(matrix)
    assume(cosine_condition(m) < (1e3 if matrix.dtype == torch.float32 else 1e8))
    expected = dual_cone_projection(m, m.sum(axis=0))
    out = run(DualProj(), matrix)
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * row_scale(m) * len(m)


@examples(25)
@given(gradient_matrices(min_rows=2))
def test_dualproj_conflicts_with_no_group(matrix):
    assert_conflicts_with_no_group(DualProj(), matrix)


# ---- aligned-mtl ---------------------------------------------------------------------------


def aligned_reference(m: np.ndarray, eps: float) -> np.ndarray:
    """The paper's Algorithm 1 on the matrix itself: J = U S W^T, aligned rows
    sigma_min U W^T, summed (preference 1 per group); components with s^2 below the
    documented cut, 32 k eps s_max^2, dropped."""
    u, s, wt = np.linalg.svd(m, full_matrices=False)
    keep = s**2 > 32 * len(m) * eps * s.max() ** 2
    aligned = s[keep].min() * u[:, keep] @ wt[keep]
    return aligned.sum(axis=0)


@examples(25)
@given(spread_matrices())
def test_aligned_mtl_matches_the_svd_of_the_matrix(matrix):
    m = as64(matrix)
    out = run(AlignedMTL(), matrix)
    expected = aligned_reference(m, torch.finfo(matrix.dtype).eps)
    bound = 10 * tolerance(matrix.dtype) * cosine_condition(m) * row_scale(m) * len(m)
    assert np.abs(out - expected).max() <= bound


@examples(25)
@given(spread_matrices(min_rows=2))
def test_aligned_mtl_rows_become_orthogonal_and_equally_long(matrix):
    """The weights are B 1 for B = sigma_min V Lambda^-1/2 V^T; the aligned rows B J have
    every singular value equal to sigma_min."""
    m = as64(matrix)
    gram = gramian(torch.from_numpy(m))
    values, vectors = torch.linalg.eigh(gram)
    balance = values.min().sqrt() * vectors @ torch.diag(values.rsqrt()) @ vectors.T
    aligned = balance.numpy() @ m
    singular = np.linalg.svd(aligned, compute_uv=False)
    np.testing.assert_allclose(singular, singular.min(), rtol=1e-6)
    weights, _ = AlignedMTL().bind(names_for(m)).weights(gram)
    # two eigendecompositions of G agree to about eps * cond(G) relative to the weights' size
    # (rows 0.03 next to 300: cond ~ 1e8, seen 1.1e-8 apart), not weight by weight: a weight
    # near 0 beside others near 1 (seen: -1.4e-7 next to 0.72) carries the others' error
    condition = float(values.max() / values.min())
    rtol = max(1e-8, 100 * np.finfo(np.float64).eps * condition)
    expected = balance.numpy() @ np.ones(len(m))
    np.testing.assert_allclose(weights.numpy(), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


# ---- nash-mtl and fairgrad -----------------------------------------------------------------


def fair_reference(m: np.ndarray, alpha: float) -> np.ndarray:
    """The papers' system G w = w^(-1/alpha), w > 0, by scipy's least squares (the FairGrad
    authors' solver) with tight tolerances, started where the rows are orthogonal, then the
    combiners' normalization. Levenberg-Marquardt on log w is tried first; either is accepted
    only at a relative residual below 1e-6 (scipy gets no closer on graded rows)."""
    optimize = pytest.importorskip("scipy.optimize")
    gram = m @ m.T
    gram = gram / np.abs(gram).max()  # the direction of w does not depend on G's scale
    start = np.diag(gram) ** (-alpha / (1 + alpha))

    def relative(w):
        return gram @ w * w ** (1 / alpha) - 1.0

    tight = {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15}
    w = np.exp(optimize.least_squares(lambda y: relative(np.exp(y)), np.log(start),
                                      method="lm", **tight).x)
    if not np.abs(relative(w)).max() < 1e-10:
        w = optimize.least_squares(lambda x: gram @ x - x ** (-1 / alpha), start,
                                   bounds=(0, np.inf), max_nfev=10000, **tight).x
    assert np.abs(relative(w)).max() < 1e-6
    return normalized(w, m) @ m


@examples(25)
@given(spread_matrices(min_rows=2), st.sampled_from([0.5, 1.0, 2.0, 5.0]))
def test_fairgrad_solves_the_papers_system(matrix, alpha):
    m = as64(matrix)
    assume(well_posed("fairgrad", matrix))
    combiner = FairGrad(alpha=alpha)
    out = run(combiner, matrix)
    expected = fair_reference(m, alpha)
    bound = 100 * tolerance(matrix.dtype) * cosine_condition(m) * np.abs(expected).max()
    assert np.abs(out - expected).max() <= bound
    # the optimality condition itself: (G w)_i w_i^(1/alpha) is the same for every i
    weights, _ = combiner.bind(names_for(m)).weights(gramian(matrix.to(torch.float64)))
    products = (m @ m.T @ weights.numpy()) * weights.numpy() ** (1 / alpha)
    assert products.min() > 0
    np.testing.assert_allclose(products, products.mean(), rtol=1e-8)


@examples(25)
@given(spread_matrices(min_rows=2))
def test_nash_mtl_is_fairgrad_with_alpha_one_and_ignores_row_lengths(matrix):
    """Proportional fairness (alpha = 1) is Nash bargaining, and log utilities make the
    direction independent of each row's length."""
    assume(well_posed("nash_mtl", matrix))
    nash = run(NashMTL(), matrix)
    np.testing.assert_allclose(nash, run(FairGrad(alpha=1.0), matrix), rtol=1e-9, atol=1e-12)
    factors = torch.tensor([10.0 ** (i - 1) for i in range(matrix.shape[0])], dtype=matrix.dtype)
    stretched = run(NashMTL(), matrix * factors[:, None])
    assert cosine(nash, stretched) >= 1 - tolerance(matrix.dtype)


# ---- config --------------------------------------------------------------------------------


@examples(25)
@given(spread_matrices(min_rows=2))
def test_config_matches_the_papers_pseudo_inverse_and_conflicts_with_no_group(matrix):
    m = as64(matrix)
    units = m / np.linalg.norm(m, axis=1)[:, None]
    direction = np.linalg.pinv(units) @ np.ones(len(m))
    direction /= np.linalg.norm(direction)
    expected = (m @ direction).sum() * direction
    out = run(ConFIG(), matrix)
    bound = 10 * tolerance(matrix.dtype) * cosine_condition(m) * np.abs(expected).max()
    assert np.abs(out - expected).max() <= bound
    cosines = units @ out / np.linalg.norm(out)
    assert cosines.min() > 0
    np.testing.assert_allclose(cosines, cosines.mean(), rtol=bound / np.abs(expected).max())


# ---- graddrop ------------------------------------------------------------------------------


def graddrop_reference(m: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Algorithm 1 of Chen et al., lines 10-15, coordinate by coordinate, given the draws."""
    out = np.zeros(m.shape[1])
    for j in range(m.shape[1]):
        column = m[:, j]
        size = np.abs(column).sum()
        purity = 0.5 * (1 + column.sum() / size) if size > 0 else 0.5
        for value in column:
            if (purity > uniform[j] and value > 0) or (purity < uniform[j] and value < 0):
                out[j] += value
    return out


@examples(25)
@given(gradient_matrices(min_rows=2), st.integers(0, 2**31 - 1))
def test_graddrop_matches_the_papers_masks(matrix, seed):
    uniform = torch.rand(matrix.shape[1], generator=torch.Generator().manual_seed(seed),
                         dtype=matrix.dtype)
    expected = graddrop_reference(as64(matrix), as64(uniform[None])[0])
    out = run(GradDrop(seed=seed), matrix)
    bound = 4 * torch.finfo(matrix.dtype).eps * np.abs(as64(matrix)).sum(axis=0)
    assert (np.abs(out - expected) <= bound + 4 * torch.finfo(matrix.dtype).tiny).all()


def test_graddrop_keeps_agreeing_coordinates_and_drops_one_sign():
    matrix = torch.tensor([[1.0, 2.0, -1.0], [3.0, -2.0, -4.0]])
    out = GradDrop(seed=0)(matrix, ["a", "b"]).gradient
    assert out[0] == 4.0 and out[2] == -5.0  # same signs: kept whole
    assert out[1] in (2.0, -2.0)  # P = 1/2: exactly one sign survives


# ---- dbmtl and moco: multi-step references -------------------------------------------------


class DBMTLReference:
    """DB-MTL's gradient balancing on vectors: m <- beta m + (1 - beta) g from 0, then
    sum_i max_j ||m_j|| / ||m_i|| m_i."""

    def __init__(self, beta: float) -> None:
        self.beta, self.averages = beta, None

    def __call__(self, m: np.ndarray) -> np.ndarray:
        previous = np.zeros_like(m) if self.averages is None else self.averages
        self.averages = self.beta * previous + (1 - self.beta) * m
        norms = np.linalg.norm(self.averages, axis=1)
        return sum(norms.max() / n * a for n, a in zip(norms, self.averages) if n > 0)


class MoCoReference:
    """Fernando et al.'s Algorithm 1 on vectors: Y tracks J (from J), lambda takes one
    projected gradient step on the simplex, the output is k Y^T lambda."""

    def __init__(self, beta: float, gamma: float, rho: float) -> None:
        self.beta, self.gamma, self.rho = beta, gamma, rho
        self.tracked, self.weights = None, None

    def __call__(self, m: np.ndarray) -> np.ndarray:
        k = len(m)
        if self.tracked is None:
            self.tracked, self.weights = m.copy(), np.full(k, 1.0 / k)
        else:
            self.tracked = self.tracked - self.beta * (self.tracked - m)
        system = self.tracked @ self.tracked.T + self.rho * np.eye(k)
        self.weights = simplex_projection(self.weights - self.gamma * system @ self.weights)
        return k * self.weights @ self.tracked


@examples(25)
@given(matrix_sequences(steps=5), st.sampled_from([0.0, 0.5, 0.9]))
def test_dbmtl_matches_the_vector_algorithm_over_steps(matrices, beta):
    combiner, reference = DBMTL(beta=beta), DBMTLReference(beta)
    for matrix in matrices:
        out, expected = run(combiner, matrix), reference(as64(matrix))
        assert np.abs(out - expected).max() <= 1e-10 * np.abs(expected).max()


@examples(25)
@given(matrix_sequences(steps=5), st.sampled_from([(0.5, 0.1, 0.0), (0.9, 0.02, 0.1),
                                                    (1.0, 0.5, 0.0)]))
def test_moco_matches_the_vector_algorithm_over_steps(matrices, options):
    beta, gamma, rho = options
    combiner, reference = MoCo(beta=beta, gamma=gamma, rho=rho), MoCoReference(beta, gamma, rho)
    for matrix in matrices:
        out, expected = run(combiner, matrix), reference(as64(matrix))
        assert np.abs(out - expected).max() <= 1e-9 * np.abs(as64(matrix)).sum(0).max()
    np.testing.assert_allclose(combiner.simplex.numpy(), reference.weights, atol=1e-10)


def test_moco_drives_lambda_to_the_min_norm_weights():
    """With fixed gradients Y settles on them and lambda's projected steps converge to MGDA's
    weights (the point of the method)."""
    matrix = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    combiner = MoCo(beta=0.5, gamma=0.1)
    for _ in range(300):
        out = combiner(matrix, ["a", "b"])
    mgda = COMBINERS.build("mgda", where="combiner")(matrix, ["a", "b"]).gradient
    torch.testing.assert_close(out.gradient, mgda, rtol=1e-6, atol=1e-9)
