"""CAGrad, GradVac, MGDA, IMTL-G and UPGrad: properties (hypothesis), independent float64
references written on the vectors themselves, and comparisons with torchjd when installed.
The properties every combiner shares: test_combiner_properties.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradsurg.combiners import (
    COMBINERS,
    GradVac,
    gramian,
)
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










# ---- mgda -----------------------------------------------------------------------------------




def exact_output(combiner, matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The combiner's weights applied in float64, and the rounding allowance of each product
    out . g_i: tol * sum_j |w_j| ||g_j|| * ||g_i|| (the error a solve on the Gramian makes)."""
    weights, _ = combiner.bind(names_for(matrix)).weights(gramian(matrix))
    w, m = weights.numpy(), as64(matrix)
    norms = np.linalg.norm(m, axis=1)
    return w @ m, tolerance(matrix.dtype) * (np.abs(w) @ norms) * norms






# ---- upgrad ---------------------------------------------------------------------------------








# ---- imtl-g ---------------------------------------------------------------------------------










# ---- cagrad ---------------------------------------------------------------------------------










# ---- gradvac --------------------------------------------------------------------------------






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




# ---- the shared QP solver -------------------------------------------------------------------




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










