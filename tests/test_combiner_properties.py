"""The properties every combiner shares, checked on each by name over shared families of
matrices (hypothesis), driven by the table in combiner_checks.py (which says which hold where,
and why); and a check that every registered built-in combiner is in that table. Each method's
own formula: test_combiner_references.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_checks import (
    HOMOGENEOUS,
    ORDER_FREE,
    SHARED,
    SINGLE_GROUP,
    TABLE,
    assert_finite_on_degenerate,
    assert_keeps_a_single_group,
    assert_permutation_invariant,
    assert_scales_linearly,
    assert_sums_identical_rows,
    build,
    examples,
    run,
    well_posed,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import gradient_matrices, ordinary_matrices

from gradsurg.combiners import COMBINERS
from gradsurg.errors import ConfigError
from gradsurg.registry import BUILT_IN

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems


@pytest.mark.parametrize("name", SHARED)
@examples(12)
@given(matrix=gradient_matrices())
def test_finite_on_zero_rows_and_extreme_scales(name, matrix):
    """Finite output of the input's shape and dtype; info values are finite floats named
    `name/...`."""
    assume(matrix.shape[0] >= TABLE[name].min_rows)
    assert_finite_on_degenerate(TABLE[name].make(), matrix, info_named=True)


@pytest.mark.parametrize("name", SINGLE_GROUP)
@examples(12)
@given(matrix=gradient_matrices(min_rows=1, max_rows=1))
def test_a_single_group_keeps_its_gradient(name, matrix):
    assert_keeps_a_single_group(TABLE[name].make, matrix, TABLE[name].sum_factor)


@pytest.mark.parametrize("name", SHARED)
@examples(12)
@given(row=ordinary_matrices(max_rows=1), k=st.integers(2, 5))
def test_identical_rows_give_the_plain_sum(name, row, k):
    """Every output is on the scale of `sum`: k copies of g give k g (times `sum_factor`)."""
    assume(k >= TABLE[name].min_rows)
    assert_sums_identical_rows(TABLE[name].make, row, k, TABLE[name].sum_factor)


@pytest.mark.parametrize("name", ORDER_FREE)
@examples(12)
@given(matrix=ordinary_matrices(min_rows=2), random=st.randoms())
def test_row_order_does_not_matter(name, matrix, random):
    assume(well_posed(name, matrix) and matrix.shape[0] >= TABLE[name].min_rows)
    order = list(range(matrix.shape[0]))
    random.shuffle(order)
    assert_permutation_invariant(TABLE[name].make, matrix, order)


@pytest.mark.parametrize("name", HOMOGENEOUS)
@examples(12)
@given(matrix=ordinary_matrices(), factor=st.floats(1e-3, 1e3))
def test_a_common_positive_scale_scales_the_output(name, matrix, factor):
    assume(well_posed(name, matrix) and matrix.shape[0] >= TABLE[name].min_rows)
    assert_scales_linearly(TABLE[name].make, matrix, factor)


def test_each_is_registered_by_its_name():
    for name, facts in TABLE.items():
        cls = type(facts.make())
        assert COMBINERS.get(name) is cls and cls.name == name
        assert isinstance(COMBINERS.build(facts.spec or name, where="combiner"), cls)


def test_the_excluded_properties_really_fail():
    """The exclusions in the table are real, not untested: each fails its property here."""
    matrix = torch.tensor([[1.0, 0.2, 0.0], [-0.6, 0.5, 0.1], [0.1, -0.7, 0.4]],
                          dtype=torch.float64)  # conflicting rows
    for name in set(SHARED) - set(ORDER_FREE):
        make = TABLE[name].make
        assert not np.allclose(run(make(), matrix), run(make(), matrix[[2, 0, 1]])), name
    for name in set(SHARED) - set(HOMOGENEOUS):  # sdmgrad: only where s^2 nears its 1e-8
        make = TABLE[name].make
        assert not all(np.allclose(run(make(), f * matrix), f * run(make(), matrix), rtol=1e-5,
                                   atol=0) for f in (10, 1e-6)), name
    for name in set(SHARED) - set(SINGLE_GROUP):
        with pytest.raises(ConfigError, match="needs at least"):
            run(TABLE[name].make(), matrix[:1])


def test_every_built_in_combiner_is_covered():
    """A new built-in combiner must join the table: with its shared properties, or marked as
    checked against its definition (`shared=False`)."""
    built_in = {entry.name for entry in COMBINERS.entries() if entry.source == BUILT_IN}
    assert built_in == set(TABLE)
    own_tests = {"sum", "mean", "project", "merge", "pcgrad", "blockwise"}  # + test_blockwise
    assert set(TABLE) - set(SHARED) == own_tests


def test_every_built_in_is_checked():
    """No built-in needs options that the table does not know (it would fail to build)."""
    for name in sorted(TABLE):
        assert build(name).name == name
