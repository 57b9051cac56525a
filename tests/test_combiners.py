"""Combiner math: properties (hypothesis) and independent float64 reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import gradient_matrices, ordinary_matrices

from gradsurg.combiners import (
    COMBINERS,
    Mean,
    Merge,
    PCGrad,
    Project,
    Sum,
    gramian,
)
from gradsurg.combiners.project import projection_coefficient
from gradsurg.errors import ConfigError

settings.register_profile("gradsurg", deadline=None, max_examples=150)
settings.load_profile("gradsurg")


def names_for(matrix: torch.Tensor) -> list[str]:
    return [f"g{i}" for i in range(matrix.shape[0])]


def tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-10


def floor(dtype: torch.dtype) -> float:
    """Absolute slack for results in the subnormal range, where relative error is meaningless."""
    return 4 * torch.finfo(dtype).tiny


def project_reference(matrix: np.ndarray, t: int, r: int) -> np.ndarray:
    """Direct vector-space GEM projection in float64: no Gramian, no rescaling."""
    rows = [row.copy() for row in matrix]
    dot = rows[t] @ rows[r]
    if dot < 0 and rows[r] @ rows[r] > 0:
        rows[t] = rows[t] - dot / (rows[r] @ rows[r]) * rows[r]
    return np.sum(rows, axis=0)


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


# ---- sum and mean ---------------------------------------------------------------------------


def assert_within_summation_bound(out, expected, matrix):
    """|out - exact| <= k * eps * sum_i |g_i|: the textbook bound for any summation order."""
    k = matrix.shape[0]
    eps = torch.finfo(matrix.dtype).eps
    bound = k * eps * matrix.to(torch.float64).abs().sum(0) + floor(matrix.dtype)
    error = (out.to(torch.float64) - expected).abs()
    assert bool((error <= bound).all()), f"error {error.max()} over bound"


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


# ---- project --------------------------------------------------------------------------------


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
    assert target @ m[r] >= -tolerance(matrix.dtype) * scale


@given(project_cases(ordinary_matrices(min_rows=2)))
def test_project_matches_the_vector_reference(case):
    matrix, t, r = case
    m = matrix.to(torch.float64).numpy()
    dot = m[t] @ m[r]
    assume(abs(dot) > 1e-3 * np.linalg.norm(m[t]) * np.linalg.norm(m[r]))  # clear sign
    out = Project(target=f"g{t}", reference=f"g{r}")(matrix, names_for(matrix)).gradient
    expected = project_reference(m, t, r)
    scale = np.abs(m).sum(0).max() + 1e-300
    bound = tolerance(matrix.dtype) * scale + floor(matrix.dtype)
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
    assert error <= tolerance(matrix.dtype) * scale + floor(matrix.dtype)


@given(project_cases(ordinary_matrices(min_rows=2)))
def test_project_is_idempotent(case):
    matrix, t, r = case
    once = projected_target(matrix, t, r)
    again_matrix = matrix.to(torch.float64).clone()
    again_matrix[t] = torch.from_numpy(once)
    twice = projected_target(again_matrix, t, r)
    scale = np.linalg.norm(matrix[t].to(torch.float64).numpy()) + 1e-300
    assert np.abs(twice - once).max() <= tolerance(matrix.dtype) * scale + floor(matrix.dtype)


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
    bound = 10 * tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(after - before).max() <= bound


@given(project_cases(ordinary_matrices(min_rows=2)), st.floats(1e-3, 1e3))
def test_project_is_equivariant_to_a_common_positive_scale(case, factor):
    matrix, t, r = case
    combiner = Project(target=f"g{t}", reference=f"g{r}")
    out = combiner(matrix, names_for(matrix)).gradient.to(torch.float64)
    scaled = combiner(matrix * factor, names_for(matrix)).gradient.to(torch.float64)
    scale = factor * (matrix.abs().sum(0).max().item() + 1e-300)
    bound = 10 * tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert (scaled - factor * out).abs().max().item() <= bound


def test_project_fires_only_on_conflict_and_keeps_the_reference():
    matrix = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    combined = Project(target="final", reference="sd")(matrix, ["final", "sd"])
    # g_t = (1, 0), g_r = (-1, 1): g_t' = (1, 0) + 0.5 (-1, 1) = (0.5, 0.5); output g_t' + g_r
    torch.testing.assert_close(combined.gradient, torch.tensor([-0.5, 1.5]))
    assert combined.info["project/fired"] == 1.0


def test_project_names_a_missing_group():
    with pytest.raises(ConfigError, match="reference group 'sd'"):
        Project(target="final", reference="sd")(torch.ones(2, 3), ["final", "other"])


# ---- pcgrad ---------------------------------------------------------------------------------


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
    assert np.abs(out - expected).max() <= tolerance(matrix.dtype) * scale + floor(matrix.dtype)


@given(ordinary_matrices(min_rows=3, max_rows=5), st.integers(0, 2**31 - 1))
def test_pcgrad_matches_the_vector_loop_for_many_groups(matrix, seed):
    m = matrix.to(torch.float64).numpy()
    out = PCGrad(seed=seed)(matrix, names_for(matrix)).gradient.to(torch.float64).numpy()
    expected = pcgrad_reference(m, seed)
    scale = np.abs(m).sum(0).max() * 10
    bound = 10 * tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(out - expected).max() <= bound


def test_pcgrad_state_round_trip_reproduces_the_order():
    matrix = torch.randn(4, 10, generator=torch.Generator().manual_seed(0))
    first = PCGrad(seed=7)
    first(matrix, names_for(matrix))
    saved = first.state_dict()
    expected = first(matrix, names_for(matrix)).gradient
    second = PCGrad(seed=0)
    second.load_state_dict(saved)
    torch.testing.assert_close(second(matrix, names_for(matrix)).gradient, expected, rtol=0, atol=0)


# ---- degenerate input, every combiner -------------------------------------------------------










# ---- composition and construction ----------------------------------------------------------


def test_merge_projects_two_groups_then_sums_a_third():
    matrix = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    merge = Merge(groups=["final", "sd"], inner=Project(target="final", reference="sd"),
                  into="main", then=Sum())
    out = merge(matrix, ["final", "sd", "aux"])
    torch.testing.assert_close(out.gradient, torch.tensor([-0.5, 1.5, 5.0]))
    assert out.info["project/fired"] == 1.0


def test_combiners_build_nested_specs():
    combiner = COMBINERS.build({
        "name": "merge",
        "groups": ["final", "sd"],
        "inner": {"name": "project", "target": "final", "reference": "sd"},
        "into": "main",
        "then": "mean",
    }, where="combiner")
    assert isinstance(combiner, Merge)
    assert isinstance(combiner.inner, Project) and isinstance(combiner.then, Mean)
    assert combiner.bind(["final", "sd", "aux"]).linear_weights() is None
    linear = COMBINERS.build({"name": "merge", "groups": ["a", "b"], "inner": "sum",
                             "into": "ab", "then": "mean"}, where="combiner")
    assert linear.bind(["a", "b", "c"]).linear_weights() == [0.5, 0.5, 0.5]


def test_combiners_build_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"unknown combiner 'pcgard'; allowed: .*pcgrad"):
        COMBINERS.build("pcgard", where="combiner")
    with pytest.raises(ConfigError, match=r"combiner \(combiner 'project'\).*target"):
        COMBINERS.build({"name": "project", "reference": "sd"}, where="combiner")
    with pytest.raises(ConfigError, match=r"combiner\.inner \(combiner 'project'\)"):
        COMBINERS.build({"name": "merge", "groups": ["a"], "into": "x", "then": "sum",
                         "inner": {"name": "project", "target": "a", "reference": "b", "x": 1}},
                        where="combiner")
