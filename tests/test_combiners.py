"""Combiner math: properties (hypothesis) and independent float64 reference computations."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from gradsurg.combiners import (
    COMBINERS,
    Mean,
    Merge,
    PCGrad,
    Project,
)
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






# ---- sum and mean ---------------------------------------------------------------------------


def assert_within_summation_bound(out, expected, matrix):
    """|out - exact| <= k * eps * sum_i |g_i|: the textbook bound for any summation order."""
    k = matrix.shape[0]
    eps = torch.finfo(matrix.dtype).eps
    bound = k * eps * matrix.to(torch.float64).abs().sum(0) + floor(matrix.dtype)
    error = (out.to(torch.float64) - expected).abs()
    assert bool((error <= bound).all()), f"error {error.max()} over bound"






# ---- project --------------------------------------------------------------------------------




















def test_project_names_a_missing_group():
    with pytest.raises(ConfigError, match="reference group 'sd'"):
        Project(target="final", reference="sd")(torch.ones(2, 3), ["final", "other"])


# ---- pcgrad ---------------------------------------------------------------------------------






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
