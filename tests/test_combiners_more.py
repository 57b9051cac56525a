"""CAGrad, GradVac, MGDA, IMTL-G and UPGrad: properties (hypothesis), independent float64
references written on the vectors themselves, and comparisons with torchjd when installed.
The properties every combiner shares: test_combiner_properties.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from strategies import gradient_matrices, ordinary_matrices

from gradsurg.combiners import (
    COMBINERS,
    IMTLG,
    MGDA,
    CAGrad,
    GradVac,
    PCGrad,
    UPGrad,
    gramian,
)
from gradsurg.combiners.qp import min_quadratic
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems


FAST = settings(max_examples=60, deadline=None)
SLOW = settings(max_examples=30, deadline=None)



def names_for(matrix) -> list[str]:
    return [f"g{i}" for i in range(matrix.shape[0])]


def run(combiner, matrix: torch.Tensor) -> np.ndarray:
    return combiner(matrix, names_for(matrix)).gradient.to(torch.float64).numpy()


def as64(matrix: torch.Tensor) -> np.ndarray:
    return matrix.to(torch.float64).numpy()


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed for a solve on the Gramian of rows in this dtype."""
    return 1e-3 if dtype == torch.float32 else 1e-7


def row_scale(m: np.ndarray) -> float:
    return float(np.linalg.norm(m, axis=1).max())


def cosine_condition(m: np.ndarray) -> float:
    """Condition number of the rows' cosine matrix (inf with a zero row)."""
    norms = np.linalg.norm(m, axis=1)
    if (norms == 0).any():
        return math.inf
    unit = m / norms[:, None]
    return float(np.linalg.cond(unit @ unit.T))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


# ---- well-conditioned inputs ---------------------------------------------------------------


@st.composite
def matrix_sequences(draw, steps: int = 4, min_rows: int = 2, dtypes=(torch.float64,)):
    """[k, n] matrices (k <= 4 < n + 1) for successive steps, rows of norms 1e-2..1e2, no two
    rows closer than cosine 0.99: well-conditioned, for methods that are not (IMTL-G's
    pseudo-inverse; GradVac's correction grows like 1 / sqrt(1 - target^2)).

    Row i is 2 e_i plus noise in [-1, 1]^n, so cosines spread over both signs without many
    near-parallel pairs to filter out."""
    k = draw(st.integers(min_rows, 4))
    n = draw(st.integers(k + 1, 10))
    dtype = draw(st.sampled_from(dtypes))
    matrices = []
    for _ in range(steps):
        base = draw(arrays(np.float64, (k, n), elements=st.floats(-1.0, 1.0)))
        base[np.arange(k), np.arange(k)] += 2.0
        exponents = draw(arrays(np.float64, (k,), elements=st.floats(-2.0, 2.0)))
        unit = base / np.linalg.norm(base, axis=1)[:, None]
        assume(np.abs(unit @ unit.T - np.eye(k)).max() < 0.99)
        matrices.append(torch.from_numpy(base * 10.0 ** exponents[:, None]).to(dtype))
    return matrices


def spread_matrices(min_rows: int = 1):
    """One well-conditioned matrix (see `matrix_sequences`), float32 or float64."""
    return matrix_sequences(steps=1, min_rows=min_rows, dtypes=(torch.float32, torch.float64)).map(
        lambda matrices: matrices[0]
    )


# ---- independent references, on vectors --------------------------------------------------


def min_norm_reference(m: np.ndarray) -> np.ndarray:
    """Min-norm point of the rows' convex hull by enumerating faces.

    The optimum is the affine min-norm point of an affinely independent subset of rows whose
    weights come out non-negative; every such candidate is feasible, so the least is it.
    """
    k = m.shape[0]
    best, best_norm = None, math.inf
    for size in range(1, k + 1):
        for subset in itertools.combinations(range(k), size):
            rows = m[list(subset)]
            base, diffs = rows[0], (rows[1:] - rows[0]).T
            lam = np.linalg.lstsq(diffs, -base, rcond=None)[0] if size > 1 else np.zeros(0)
            weights = np.concatenate([[1 - lam.sum()], lam])
            if weights.min() < -1e-9:
                continue
            point = weights @ rows
            if np.linalg.norm(point) < best_norm:
                best, best_norm = point, np.linalg.norm(point)
    assert best is not None
    return best


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


# ---- mgda -----------------------------------------------------------------------------------


@FAST
@given(ordinary_matrices(max_rows=5))
def test_mgda_is_k_times_the_min_norm_point(matrix):
    m = as64(matrix)
    out = run(MGDA(), matrix)
    expected = matrix.shape[0] * min_norm_reference(m)
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * row_scale(m) * len(m)


def exact_output(combiner, matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The combiner's weights applied in float64, and the rounding allowance of each product
    out . g_i: tol * sum_j |w_j| ||g_j|| * ||g_i|| (the error a solve on the Gramian makes)."""
    weights, _ = combiner.bind(names_for(matrix)).weights(gramian(matrix))
    w, m = weights.numpy(), as64(matrix)
    norms = np.linalg.norm(m, axis=1)
    return w @ m, tolerance(matrix.dtype) * (np.abs(w) @ norms) * norms


@FAST
@given(gradient_matrices(min_rows=2))
def test_mgda_conflicts_with_no_group(matrix):
    """d . g_i >= ||d||^2 for the min-norm point d (output k d), so no product is negative."""
    out, allowance = exact_output(MGDA(), matrix)
    k = matrix.shape[0]
    products = as64(matrix) @ out
    assert (products >= -allowance).all()
    assert (products >= out @ out / k - allowance).all()




# ---- upgrad ---------------------------------------------------------------------------------


@FAST
@given(ordinary_matrices(max_rows=4, max_cols=8))
def test_upgrad_is_the_sum_of_dual_cone_projections(matrix):
    m = as64(matrix)
    # nearly dependent rows make a thin cone that a Gramian rounded to the dtype cannot see
    assume(cosine_condition(m) < (1e3 if matrix.dtype == torch.float32 else 1e8))
    expected = sum(dual_cone_projection(m, row) for row in m)
    out = run(UPGrad(), matrix)
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * row_scale(m) * len(m)


@FAST
@given(gradient_matrices(min_rows=2))
def test_upgrad_conflicts_with_no_group(matrix):
    out, allowance = exact_output(UPGrad(), matrix)
    assert (as64(matrix) @ out >= -allowance).all()


@FAST
@given(ordinary_matrices(min_rows=2))
def test_upgrad_without_conflict_is_the_sum(matrix):
    m = np.abs(as64(matrix))  # non-negative rows never conflict
    out = run(UPGrad(), torch.from_numpy(m).to(matrix.dtype))
    assert np.abs(out - m.sum(0)).max() <= tolerance(matrix.dtype) * np.abs(m).sum(0).max()


# ---- imtl-g ---------------------------------------------------------------------------------


@FAST
@given(spread_matrices())
def test_imtlg_matches_the_papers_closed_form(matrix):
    m = as64(matrix)
    out = run(IMTLG(), matrix)
    expected = imtlg_reference(m)
    bound = 10 * tolerance(matrix.dtype) * cosine_condition(m) * np.abs(expected).max()
    assert np.abs(out - expected).max() <= bound


@FAST
@given(spread_matrices(min_rows=2))
def test_imtlg_projections_onto_unit_directions_are_equal_and_positive(matrix):
    m = as64(matrix)
    out = run(IMTLG(), matrix)
    projections = (m / np.linalg.norm(m, axis=1)[:, None]) @ out
    assert projections.min() > 0
    spread = projections.max() - projections.min()
    assert spread <= 10 * tolerance(matrix.dtype) * cosine_condition(m) * projections.max()


@FAST
@given(spread_matrices(min_rows=2), st.lists(st.floats(1e-3, 1e3), min_size=5))
def test_imtlg_direction_ignores_each_rows_scale(matrix, factors):
    scaled = matrix * torch.tensor(factors[: matrix.shape[0]], dtype=matrix.dtype)[:, None]
    a, b = run(IMTLG(), matrix), run(IMTLG(), scaled)
    assert cosine(a, b) >= 1 - tolerance(matrix.dtype)




# ---- cagrad ---------------------------------------------------------------------------------


@SLOW
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


@FAST
@given(ordinary_matrices(min_rows=2))
def test_cagrad_with_c_zero_is_the_sum(matrix):
    out = run(CAGrad(c=0.0), matrix)
    m = as64(matrix)
    assert np.abs(out - m.sum(0)).max() <= tolerance(matrix.dtype) * np.abs(m).sum(0).max()


@FAST
@given(gradient_matrices(min_rows=2), st.sampled_from([0.5, 1.0, 2.0]))
def test_cagrad_stays_in_the_ball_around_the_mean(matrix, c):
    m = as64(matrix)
    d = run(CAGrad(c=c), matrix) / matrix.shape[0]
    g0 = m.mean(axis=0)
    slack = 10 * tolerance(matrix.dtype) * row_scale(m)
    assert np.linalg.norm(d - g0) <= c * np.linalg.norm(g0) + slack




# ---- gradvac --------------------------------------------------------------------------------


@FAST
@given(ordinary_matrices(min_rows=2), st.integers(0, 2**31 - 1))
def test_gradvac_first_step_is_pcgrad(matrix, seed):
    """The targets start at 0, where the vaccine is PCGrad's projection."""
    out = run(GradVac(seed=seed), matrix)
    expected = run(PCGrad(seed=seed), matrix)
    scale = np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * scale


@SLOW
@given(matrix_sequences(), st.sampled_from([0.01, 0.5, 1.0]), st.integers(0, 2**31 - 1))
def test_gradvac_matches_the_vector_algorithm_over_steps(matrices, beta, seed):
    combiner, reference = GradVac(beta=beta, seed=seed), GradVacReference(beta, seed)
    for matrix in matrices:
        m = as64(matrix)
        out, expected = run(combiner, matrix), reference(m)
        scale = np.abs(m).sum(0).max() * 10
        assert np.abs(out - expected).max() <= 1e-8 * scale
    np.testing.assert_allclose(combiner.targets.numpy(), reference.targets, atol=1e-9)


def test_gradvac_state_round_trip_through_a_weights_only_checkpoint(tmp_path):
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(4, 12, generator=generator) for _ in range(6)]
    names = ["final", "sd", "exit1", "exit2"]
    uninterrupted = GradVac(beta=0.3, seed=5)
    first = GradVac(beta=0.3, seed=5)
    for matrix in matrices[:3]:
        uninterrupted(matrix, names)
        first(matrix, names)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    restored = GradVac(beta=0.3, seed=99)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.names == names and restored.seed == 5
    for matrix in matrices[3:]:
        expected = uninterrupted(matrix, names).gradient
        torch.testing.assert_close(restored(matrix, names).gradient, expected, rtol=0, atol=0)
    torch.testing.assert_close(restored.targets, uninterrupted.targets, rtol=0, atol=0)


def test_gradvac_targets_are_kept_per_pair_of_names():
    combiner = GradVac(beta=1.0, seed=0)
    matrix = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    combiner(matrix, ["a", "b"])
    cos = 1 / math.sqrt(2)
    np.testing.assert_allclose(combiner.targets.numpy(), [[0.0, cos], [cos, 0.0]], atol=1e-12)
    combiner(torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), ["c", "a", "b"])
    assert combiner.names == ["c", "a", "b"]
    # the pair (a, b) kept its target (now updated with beta = 1 to the new cosine)
    assert combiner.targets[1, 2].item() == pytest.approx(cos)
    assert combiner.targets[0, 1].item() == pytest.approx(0.0)


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


# ---- the shared QP solver -------------------------------------------------------------------


@FAST
@given(gradient_matrices(), st.booleans())
def test_min_quadratic_returns_feasible_weights(matrix, simplex):
    k = matrix.shape[0]
    lower = torch.zeros(k, dtype=torch.float64) if simplex else torch.eye(k, dtype=torch.float64)[0]
    weights, _ = min_quadratic(gramian(matrix), lower, total=1.0 if simplex else None)
    assert torch.isfinite(weights).all()
    assert bool((weights >= lower).all())
    if simplex:
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


# ---- construction ---------------------------------------------------------------------------


def test_options_reach_the_combiner_by_name():
    combiner = COMBINERS.build({"name": "gradvac", "beta": 0.1, "seed": 3}, where="combiner")
    assert combiner.beta == 0.1 and combiner.seed == 3
    assert COMBINERS.build({"name": "cagrad", "c": 0.2}, where="combiner").c == 0.2


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"name": "cagrad", "c": -1}, r"'cagrad': c must be a finite number >= 0, got -1"),
        ({"name": "cagrad", "c": float("nan")}, r"'cagrad': c must"),
        ({"name": "cagrad", "c": "big"}, r"'cagrad': c must"),
        ({"name": "gradvac", "beta": 1.5}, r"'gradvac': beta must be a number in \[0, 1\]"),
        ({"name": "gradvac", "beta": -0.1}, r"'gradvac': beta must"),
        ({"name": "gradvac", "seed": 1.5}, r"'gradvac': seed must be an integer"),
        ({"name": "mgda", "max_iters": 3}, r"combiner \(combiner 'mgda'\).*max_iters"),
        ({"name": "upgrad", "c": 1}, r"combiner \(combiner 'upgrad'\).*'c'"),
        ({"name": "imtlg", "beta": 1}, r"combiner \(combiner 'imtlg'\).*'beta'"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        COMBINERS.build(spec, where="combiner")


# ---- torchjd, when installed ---------------------------------------------------------------


@SLOW
@given(ordinary_matrices(min_rows=2, max_rows=5))
def test_mgda_agrees_with_torchjd(matrix):
    """torchjd's MGDA is Sener & Koltun's Frank-Wolfe (approximate, mean scale): ours is k times
    a point at least as short, and close to theirs."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    m = matrix.to(torch.float64)
    theirs = aggregation.MGDA(epsilon=1e-9, max_iters=3000)(m).numpy()
    ours = run(MGDA(), m) / matrix.shape[0]
    scale = row_scale(as64(m))
    assert np.linalg.norm(ours) <= np.linalg.norm(theirs) + 1e-9 * scale
    assert np.abs(ours - theirs).max() <= 1e-2 * scale


@FAST
@given(spread_matrices(min_rows=2))
def test_imtlg_agrees_with_torchjd(matrix):
    """torchjd's IMTLG is pinv(G) d normalized to sum 1 (mean scale): ours is k times it when
    its weights are non-negative. Its pseudo-inverse of the raw Gramian drops rows more than
    ~1e8 shorter than the longest (their squares fall below eps); ours works on cosines, so
    the comparison keeps row norms within 1e4 of each other."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    m = matrix.to(torch.float64)
    weights = aggregation.IMTLGWeighting()(m @ m.T)
    assume(bool((weights >= 0).all()))
    theirs = (weights @ m).numpy()
    ours = run(IMTLG(), m)
    assert np.abs(ours - m.shape[0] * theirs).max() <= 1e-6 * np.abs(ours).max()


@SLOW
@given(matrix_sequences(), st.integers(0, 2**31 - 1))
def test_gradvac_agrees_with_torchjd(matrices, seed):
    """torchjd's GradVac draws its orders from the global generator: seeded alike, and with
    eps = 0, the two agree step after step (both sum the modified rows)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    theirs = aggregation.GradVac(beta=0.5, eps=0.0)
    ours = GradVac(beta=0.5, seed=seed)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for matrix in matrices:
            expected = theirs(matrix).numpy()
            out = run(ours, matrix)
            assert np.abs(out - expected).max() <= 1e-8 * np.abs(as64(matrix)).sum(0).max() * 10
    finally:
        torch.random.set_rng_state(state)


def test_upgrad_agrees_with_torchjd():
    """torchjd's UPGrad averages the projections (ours sums them); it needs quadprog, and
    regularizes the Gramian by 1e-4, hence the loose tolerance."""
    pytest.importorskip("qpsolvers")
    pytest.importorskip("quadprog")
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        m = torch.randn(4, 6, generator=generator, dtype=torch.float64)
        theirs = aggregation.UPGrad()(m).numpy()
        ours = run(UPGrad(), m)
        assert np.abs(ours - 4 * theirs).max() <= 1e-2 * np.abs(ours).max()


def test_cagrad_agrees_with_torchjd():
    """torchjd's CAGrad weights are 1/k + sqrt(phi)/||g_w|| w (mean scale): ours are k times
    them. It needs cvxpy and clarabel."""
    pytest.importorskip("cvxpy")
    pytest.importorskip("clarabel")
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(2)
    for _ in range(20):
        m = torch.randn(3, 6, generator=generator, dtype=torch.float64)
        theirs = aggregation.CAGrad(c=0.5, norm_eps=0.0)(m).numpy()
        ours = run(CAGrad(c=0.5), m)
        assert np.abs(ours - 3 * theirs).max() <= 1e-4 * np.abs(ours).max()
