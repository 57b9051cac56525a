"""Shared hypothesis strategies: gradient matrices over the whole float range."""

from __future__ import annotations

import numpy as np
import torch
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
