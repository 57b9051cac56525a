"""`balanced_sum`: properties (hypothesis), a numpy reference, and the plugin's registration."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gradsurg_balanced import BalancedSum
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.combiners import COMBINERS

FAST = settings(max_examples=80, deadline=None)
RECIPE = Path(__file__).resolve().parents[3] / "recipes" / "romebert_glue.yaml"
ENTRIES = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(-1.0, -1e-6))


@st.composite
def matrices(draw, *, min_exponent=-30, max_exponent=15, zero_rows=True, max_rows=5):
    """`[k, n]` float32/float64 matrices, row i of magnitude 10**e_i; some rows zero."""
    k, n = draw(st.integers(1, max_rows)), draw(st.integers(1, 16))
    rows = draw(arrays(np.float64, (k, n), elements=ENTRIES))
    exponents = draw(arrays(np.int64, (k,), elements=st.integers(min_exponent, max_exponent)))
    rows = rows * 10.0 ** exponents[:, None]
    if zero_rows:
        rows[draw(arrays(np.bool_, (k,)))] = 0.0
    return torch.from_numpy(rows).to(draw(st.sampled_from([torch.float32, torch.float64])))


def ordinary():
    return matrices(min_exponent=-3, max_exponent=3, zero_rows=False)


def run(matrix: torch.Tensor) -> np.ndarray:
    names = [f"g{i}" for i in range(matrix.shape[0])]
    return BalancedSum()(matrix, names).gradient.to(torch.float64).numpy()


def reference(m: np.ndarray) -> np.ndarray:
    """The definition on the vectors, in float64: no Gramian, no weights."""
    norms = np.linalg.norm(m, axis=1)
    nonzero = norms > 0
    if not nonzero.any():
        return np.zeros(m.shape[1])
    mean = norms[nonzero].mean()
    return sum(mean * row / norm for row, norm in zip(m[nonzero], norms[nonzero]))


def mean_norm(matrix: torch.Tensor) -> float:
    """m: the mean norm of the non-zero rows (0 when every row is zero)."""
    norms = np.linalg.norm(matrix.to(torch.float64).numpy(), axis=1)
    return float(norms[norms > 0].mean()) if (norms > 0).any() else 0.0


def bound(matrix: torch.Tensor) -> float:
    """k rows of norm m summed in the input's dtype, plus slack for subnormal results."""
    eps, tiny = torch.finfo(matrix.dtype).eps, torch.finfo(matrix.dtype).tiny
    return 8 * matrix.shape[0] * eps * mean_norm(matrix) + 4 * tiny


@FAST
@given(ordinary(), st.integers(2, 5))
def test_identical_rows_give_the_plain_sum(matrix, k):
    repeated = matrix[:1].repeat(k, 1)
    expected = k * matrix[0].to(torch.float64).numpy()
    assert np.abs(run(repeated) - expected).max() <= bound(repeated)


@FAST
@given(ordinary(), st.data(), st.floats(1e-3, 1e3))
def test_rescaling_one_row_keeps_the_direction(matrix, data, factor):
    """Only the mean norm m moves: out / m is unchanged (and so is the output's direction)."""
    i = data.draw(st.integers(0, matrix.shape[0] - 1))
    scaled = matrix.clone()
    scaled[i] *= factor
    mean, mean_scaled = mean_norm(matrix), mean_norm(scaled)
    assume(mean > 0)
    difference = run(scaled) / mean_scaled - run(matrix) / mean
    assert np.abs(difference).max() <= 2 * bound(matrix) / mean


@FAST
@given(ordinary(), st.floats(1e-3, 1e3))
def test_a_common_positive_scale_scales_the_output(matrix, factor):
    out, scaled = run(matrix), run(matrix * factor)
    assert np.abs(scaled - factor * out).max() <= 2 * factor * bound(matrix)


@FAST
@given(matrices())
def test_matches_a_numpy_computation_over_the_whole_range(matrix):
    expected = reference(matrix.to(torch.float64).numpy())
    assert np.abs(run(matrix) - expected).max() <= bound(matrix)


@FAST
@given(matrices())
def test_finite_on_zero_rows_and_extreme_scales(matrix):
    names = [f"g{i}" for i in range(matrix.shape[0])]
    combined = BalancedSum()(matrix, names)
    assert combined.gradient.dtype == matrix.dtype
    assert combined.gradient.shape == (matrix.shape[1],)
    assert torch.isfinite(combined.gradient).all()
    assert all(math.isfinite(v) and k.startswith("balanced_sum/") for k, v in
               combined.info.items())


def test_zero_rows_contribute_nothing():
    matrix = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    combined = BalancedSum()(matrix, ["a", "b", "c"])
    # norms 3 and 1, mean 2: (2, 0) + (0, 2)
    torch.testing.assert_close(combined.gradient, torch.tensor([2.0, 2.0]))
    assert combined.info == {"balanced_sum/zero_rows": 1.0, "balanced_sum/norm_spread": 3.0}
    assert torch.equal(BalancedSum()(torch.zeros(2, 3), ["a", "b"]).gradient, torch.zeros(3))


def test_registered_by_name_through_the_entry_point():
    assert COMBINERS.get("balanced_sum") is BalancedSum
    assert COMBINERS.source("balanced_sum") == "gradsurg-balanced"
    assert isinstance(COMBINERS.build({"name": "balanced_sum"}, where="combiner"), BalancedSum)
    listing = json.loads(CliRunner().invoke(app, ["plugins", "--json"]).output)
    assert {"name": "balanced_sum", "source": "gradsurg-balanced", "error": None,
            "tested_against": BalancedSum.tested_against} in listing["combiners"]["entries"]


@pytest.mark.skipif(not RECIPE.is_file(), reason="needs the gradsurg repository's recipes/")
def test_a_recipe_validates_with_it():
    result = CliRunner().invoke(app, ["validate", str(RECIPE), "--set", "combiner=balanced_sum"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
