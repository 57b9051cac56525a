"""The properties every weighted combiner shares, checked on each of them by name (hypothesis).

Which hold where, and why:
  * finite on zero rows and 1e-30..1e15 in float32, with info values named `name/...`: all.
  * one group keeps its gradient, k identical rows give their sum: all, times a known factor
    for two: `cagrad` returns (1 + c) g, and `dbmtl`'s running average starts at 0 (its first
    step gives (1 - beta) times the sum).
  * row order does not matter: all but `rlw` (its random weights go to rows by position),
    `gradvac` (from three rows on, it visits the others in a seeded random order, drawn by
    position) and `pcd` (its primary is the first row unless named; test_pcd.py checks that
    with the primary named, the order of the rows does not matter). `graddrop` draws one
    number per coordinate, not per row, so it qualifies.
  * scaling every row by c > 0 scales the output by c: all but `moco`, whose weight step
    gamma Y Y^T lambda grows with the squared norms (the paper's method is not scale-free),
    and `excess_mtl`, whose first step (as in the official code) uses the raw excess risks.
  * `krum` and `trimmed_mean` need at least 3 groups here (n_byzantine + 3, 2 trim + 1):
    each property is checked from that many rows on, and one group alone is refused
    (test_robust_combiners.py).
Stateful and random methods are compared on fresh instances with the same seed. The methods'
own formulas are tested in test_combiners_more.py and test_combiners_new.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import gradient_matrices, ordinary_matrices
from test_combiners_more import (
    as64,
    cosine_condition,
    min_norm_reference,
    names_for,
    run,
    tolerance,
)

from gradsurg.combiners import (
    CRMOGM,
    DBMTL,
    IMTLG,
    MGDA,
    PCD,
    RLW,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    ExcessMTL,
    FairGrad,
    GradDrop,
    GradVac,
    Krum,
    MoCo,
    NashMTL,
    TrimmedMean,
    UPGrad,
)
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems

EACH = settings(max_examples=12, deadline=None)


@dataclass(frozen=True)
class Facts:
    make: Callable[[], object]
    #: output on one row (and on k identical rows) relative to the row (their plain sum)
    sum_factor: float = 1.0
    order_free: bool = True
    homogeneous: bool = True
    #: fewest groups the method is defined for (Krum: n_byzantine + 3; trimmed mean: 2 trim + 1)
    min_rows: int = 1


COMBINERS = {
    "mgda": Facts(MGDA),
    "upgrad": Facts(UPGrad),
    "imtlg": Facts(IMTLG),
    "cagrad": Facts(lambda: CAGrad(c=0.5), sum_factor=1.5),
    "gradvac": Facts(lambda: GradVac(beta=0.5, seed=1), order_free=False),
    "dualproj": Facts(DualProj),
    "aligned_mtl": Facts(AlignedMTL),
    "nash_mtl": Facts(NashMTL),
    "config": Facts(ConFIG),
    "fairgrad": Facts(FairGrad),
    "graddrop": Facts(lambda: GradDrop(seed=3)),
    "rlw": Facts(lambda: RLW(seed=3), order_free=False),
    "dbmtl": Facts(DBMTL, sum_factor=0.1),
    "moco": Facts(MoCo, homogeneous=False),
    # eps = 0: the normalization by sqrt(v + eps) is then exactly scale-free
    "pcd": Facts(lambda: PCD(eps=0.0), order_free=False),
    "krum": Facts(lambda: Krum(n_selected=2), min_rows=3),
    "trimmed_mean": Facts(TrimmedMean, min_rows=3),
    "cr_mogm": Facts(lambda: CRMOGM(inner=MGDA(), alpha=0.5)),  # fresh: its first step is mgda's
    # its first step moves the weights by the raw excess risks, which grow with the rows
    "excess_mtl": Facts(ExcessMTL, homogeneous=False),
}
ORDER_FREE = [name for name, facts in COMBINERS.items() if facts.order_free]
SINGLE_GROUP = [name for name, facts in COMBINERS.items() if facts.min_rows == 1]
HOMOGENEOUS = [name for name, facts in COMBINERS.items() if facts.homogeneous]
#: A pseudo-inverse or a rank cut: nearly dependent rows make the answer ill-posed.
RANK_SENSITIVE = ("imtlg", "aligned_mtl", "config")


def well_posed(name: str, matrix: torch.Tensor) -> bool:
    m = as64(matrix)
    if name in RANK_SENSITIVE:
        return cosine_condition(m) < 1e4
    if name in ("nash_mtl", "fairgrad"):  # near a Pareto-stationary point the weights blow up
        return cosine_condition(m) < 1e4 and not _near_stationary(m)
    return True


def _near_stationary(m: np.ndarray) -> bool:
    """0 within 1e-2 of the hull of the unit directions (enumerating the hull's faces)."""
    unit = m / np.linalg.norm(m, axis=1)[:, None]
    return bool(np.linalg.norm(min_norm_reference(unit)) < 1e-2)


@pytest.mark.parametrize("name", list(COMBINERS))
@EACH
@given(matrix=gradient_matrices())
def test_finite_on_zero_rows_and_extreme_scales(name, matrix):
    """Finite output of the input's shape and dtype; info values are finite floats named
    `name/...`."""
    assume(matrix.shape[0] >= COMBINERS[name].min_rows)
    out = COMBINERS[name].make()(matrix, names_for(matrix))
    assert out.gradient.shape == (matrix.shape[1],)
    assert out.gradient.dtype == matrix.dtype
    assert torch.isfinite(out.gradient).all(), f"{name} gave non-finite output"
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.info.values())
    assert all(key.startswith(f"{name}/") for key in out.info)


@pytest.mark.parametrize("name", SINGLE_GROUP)
@EACH
@given(matrix=gradient_matrices(min_rows=1, max_rows=1))
def test_a_single_group_keeps_its_gradient(name, matrix):
    out = run(COMBINERS[name].make(), matrix)
    expected = COMBINERS[name].sum_factor * as64(matrix)[0]
    bound = tolerance(matrix.dtype) * np.abs(expected).max() + 4 * torch.finfo(matrix.dtype).tiny
    assert np.abs(out - expected).max() <= bound


@pytest.mark.parametrize("name", list(COMBINERS))
@EACH
@given(row=ordinary_matrices(max_rows=1), k=st.integers(2, 5))
def test_identical_rows_give_the_plain_sum(name, row, k):
    """Every output is on the scale of `sum`: k copies of g give k g (times `sum_factor`)."""
    assume(k >= COMBINERS[name].min_rows)
    out = run(COMBINERS[name].make(), row.repeat(k, 1))
    expected = COMBINERS[name].sum_factor * k * as64(row)[0]
    assert np.abs(out - expected).max() <= tolerance(row.dtype) * np.abs(expected).max()


@pytest.mark.parametrize("name", ORDER_FREE)
@EACH
@given(matrix=ordinary_matrices(min_rows=2), random=st.randoms())
def test_row_order_does_not_matter(name, matrix, random):
    assume(well_posed(name, matrix) and matrix.shape[0] >= COMBINERS[name].min_rows)
    order = list(range(matrix.shape[0]))
    random.shuffle(order)
    make = COMBINERS[name].make
    out, shuffled = run(make(), matrix), run(make(), matrix[order])
    scale = np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(out - shuffled).max() <= tolerance(matrix.dtype) * scale


@pytest.mark.parametrize("name", HOMOGENEOUS)
@EACH
@given(matrix=ordinary_matrices(), factor=st.floats(1e-3, 1e3))
def test_a_common_positive_scale_scales_the_output(name, matrix, factor):
    assume(well_posed(name, matrix) and matrix.shape[0] >= COMBINERS[name].min_rows)
    make = COMBINERS[name].make
    out, scaled = run(make(), matrix), run(make(), matrix * factor)
    scale = factor * np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(scaled - factor * out).max() <= tolerance(matrix.dtype) * scale


def test_each_is_registered_by_its_name():
    from gradsurg.combiners import COMBINERS as REGISTRY

    for name, facts in COMBINERS.items():
        cls = type(facts.make())
        assert REGISTRY.get(name) is cls and cls.name == name
        assert isinstance(REGISTRY.build(name, where="combiner"), cls)


def test_the_excluded_properties_really_fail():
    """The exclusions above are real, not untested: each fails its property here."""
    matrix = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 0.5, 0.1], [0.1, -0.7, 0.4]],
                          dtype=torch.float64)  # conflicting rows
    for name in set(COMBINERS) - set(ORDER_FREE):
        make = COMBINERS[name].make
        assert not np.allclose(run(make(), matrix), run(make(), matrix[[2, 0, 1]])), name
    for name in set(COMBINERS) - set(HOMOGENEOUS):
        make = COMBINERS[name].make
        assert not np.allclose(run(make(), 10 * matrix), 10 * run(make(), matrix)), name
    for name in set(COMBINERS) - set(SINGLE_GROUP):
        with pytest.raises(ConfigError, match="needs at least"):
            run(COMBINERS[name].make(), matrix[:1])


def test_every_built_in_combiner_is_covered():
    """A new built-in combiner must join the table above, or the ones whose properties are
    their definitions (test_combiners.py)."""
    from gradsurg.combiners import COMBINERS as REGISTRY
    from gradsurg.registry import BUILT_IN

    built_in = {entry.name for entry in REGISTRY.entries() if entry.source == BUILT_IN}
    own_tests = {"sum", "mean", "project", "merge", "pcgrad", "blockwise"}  # + test_blockwise
    assert built_in == set(COMBINERS) | own_tests
