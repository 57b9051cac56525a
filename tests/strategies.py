"""Shared hypothesis strategies: gradient matrices over the whole float range, and
well-conditioned matrices (one, or one per step) for the methods that need them."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

DTYPES = (torch.float32, torch.float64)
# Entries of a row before its 10**e scale: zero or of magnitude 1e-6..1, so that a row of scale
# 10**e stays within the range the combiners promise (1e-30 .. 1e15 in float32).
UNIT_ENTRIES = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(-1.0, -1e-6))


@st.composite
def gradient_matrices(
    draw,
    *,
    min_rows: int = 1,
    max_rows: int = 5,
    max_cols: int = 24,
    min_exponent: int = -30,
    max_exponent: int = 15,
    allow_zero_rows: bool = True,
) -> torch.Tensor:
    """A `[k, n]` matrix whose rows have magnitudes 10**e, e drawn per row; some rows zero."""
    k = draw(st.integers(min_rows, max_rows))
    n = draw(st.integers(1, max_cols))
    dtype = draw(st.sampled_from(DTYPES))
    base = draw(arrays(np.float64, (k, n), elements=UNIT_ENTRIES))
    exponents = draw(st.lists(st.integers(min_exponent, max_exponent), min_size=k, max_size=k))
    rows = base * (10.0 ** np.asarray(exponents, dtype=np.float64))[:, None]
    if allow_zero_rows:
        zero = draw(st.lists(st.booleans(), min_size=k, max_size=k))
        rows[np.asarray(zero)] = 0.0
    return torch.from_numpy(rows).to(dtype)


def ordinary_matrices(**kwargs) -> st.SearchStrategy[torch.Tensor]:
    """Matrices of ordinary magnitude, where float64 references are trustworthy."""
    return gradient_matrices(min_exponent=-3, max_exponent=3, allow_zero_rows=False, **kwargs)


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
