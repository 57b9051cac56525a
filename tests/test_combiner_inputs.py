"""Combiners on degenerate and extreme inputs (zero rows, opposite rows, magnitudes from 1e-30
to 1e15 in float32), and called as plain functions: a combiner called directly is a plain
function of its input's values, it builds no autograd graph, even on a matrix that requires
grad (as torchjd's aggregators promise), and its state keeps none. The QP-based combiners on
the inputs block-wise surgery produces: test_hard_inputs.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from combiner_checks import (
    assert_builds_no_graph,
    assert_finite_on_degenerate,
    floor,
    vector_tolerance,
)
from hypothesis import assume, given
from strategies import gradient_matrices

from gradsurg.combiners import (
    COMBINERS,
    IMTLG,
    MGDA,
    CAGrad,
    Mean,
    Merge,
    NashMTL,
    PCGrad,
    Project,
    Sum,
)
from gradsurg.registry import BUILT_IN

pytestmark = pytest.mark.usefixtures("one_thread")
BUILT_INS = sorted(e.name for e in COMBINERS.entries() if e.source == BUILT_IN)


# ---- plain functions ------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILT_INS)
def test_a_direct_call_builds_no_graph(name):
    assert_builds_no_graph(name)


def test_a_shared_gramian_that_requires_grad_builds_no_graph():
    matrix = torch.tensor([[1.0, 0.2, -0.3, 0.0], [-0.6, 0.5, 0.1, 0.2],
                           [0.1, -0.7, 0.4, 0.3]]).requires_grad_()
    gram = (matrix @ matrix.T).to(torch.float64)
    out = COMBINERS.build("upgrad", where="combiner")(matrix, ["g0", "g1", "g2"], gram=gram)
    assert out.gradient.grad_fn is None and not out.gradient.requires_grad


# ---- degenerate and extreme inputs ---------------------------------------------------------


def all_combiners(k: int):
    names = [f"g{i}" for i in range(k)]
    yield Sum()
    yield Mean()
    yield PCGrad(seed=0)
    if k >= 2:
        yield Project(target=names[0], reference=names[1])
        yield Project(target=names[1], reference=names[0])
        yield Merge(groups=names[:2], inner=Project(target=names[0], reference=names[1]),
                    into="merged", then=Sum())


@given(gradient_matrices())
def test_every_combiner_stays_finite(matrix):
    for combiner in all_combiners(matrix.shape[0]):
        assert_finite_on_degenerate(combiner, matrix)


@given(gradient_matrices(min_rows=2, max_rows=2, allow_zero_rows=False))
def test_project_on_extreme_magnitudes_matches_an_exact_reference(matrix):
    """1e-30 against 1e15 in float32: squares underflow and overflow, the answer must not."""
    m = matrix.to(torch.float64).numpy()
    scales = np.abs(m).max(1)
    assume(bool((scales > 0).all()))
    unit = m / scales[:, None]  # float64 reference on rescaled rows: exact enough
    dot = unit[0] @ unit[1]
    assume(abs(dot) > 1e-3 * np.linalg.norm(unit[0]) * np.linalg.norm(unit[1]))
    target = unit[0] - (dot / (unit[1] @ unit[1])) * unit[1] if dot < 0 else unit[0]
    expected = scales[0] * target + m[1]
    out = Project(target="g0", reference="g1")(matrix, ["g0", "g1"]).gradient
    out = out.to(torch.float64).numpy()
    scale = np.abs(m).sum(0).max()
    bound = vector_tolerance(matrix.dtype) * scale + floor(matrix.dtype)
    assert np.abs(out - expected).max() <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_reference_and_zero_target_are_no_ops(dtype):
    target = torch.tensor([1.0, -2.0, 3.0], dtype=dtype)
    zero = torch.zeros(3, dtype=dtype)
    combiner = Project(target="t", reference="r")
    out = combiner(torch.stack([target, zero]), ["t", "r"])
    assert torch.equal(out.gradient, target) and out.info["project/fired"] == 0.0
    out = combiner(torch.stack([zero, target]), ["t", "r"])
    assert torch.equal(out.gradient, target) and out.info["project/fired"] == 0.0


def test_mgda_with_a_zero_row_or_opposite_rows_is_zero():
    zero = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert torch.equal(MGDA()(zero, ["a", "b"]).gradient, torch.zeros(2))
    opposite = torch.tensor([[1.0, 2.0], [-2.0, -4.0]])
    out = MGDA()(opposite, ["a", "b"])
    assert out.gradient.abs().max() <= 1e-6
    assert out.info["mgda/norm_ratio"] <= 1e-6


def test_imtlg_degenerate_rows():
    # a zero row gets weight 0 and does not constrain the others
    out = IMTLG()(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]]), ["a", "b", "c"])
    assert out.gradient[0].item() == pytest.approx(out.gradient[1].item())  # onto (1,0), (0,1)
    # opposite rows: equal projections force 0
    out = IMTLG()(torch.tensor([[1.0, 1.0], [-3.0, -3.0]]), ["a", "b"])
    assert out.gradient.abs().max() <= 1e-6
    # duplicated direction (linearly dependent): still finite and impartial
    matrix = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    out = IMTLG()(matrix, ["a", "b", "c"])
    assert torch.isfinite(out.gradient).all()
    assert out.gradient[0].item() == pytest.approx(out.gradient[1].item(), rel=1e-5)
    assert out.info["imtlg/rank"] == 2.0
    # all rows zero
    assert torch.equal(IMTLG()(torch.zeros(3, 4), ["a", "b", "c"]).gradient, torch.zeros(4))


def test_cagrad_degenerate_optimum_falls_back_to_the_dual_cone_projection():
    # g_2 = 0: the optimal g_w is 0; every d with d_1 >= 0 in the ball is optimal, and g0 is
    combined = CAGrad(c=0.5)(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), ["a", "b"])
    assert combined.info["cagrad/fallback"] == 1.0
    torch.testing.assert_close(combined.gradient, torch.tensor([1.0, 0.0]))
    # opposite rows with c >= 1: the ball contains 0 and d = 0 is the closest optimum to g0
    combined = CAGrad(c=1.5)(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), ["a", "b"])
    assert combined.info["cagrad/fallback"] == 1.0
    assert combined.gradient.abs().max() <= 1e-6
    # the same rows with c < 1: the worst group is helped as much as the ball allows
    combined = CAGrad(c=0.5)(torch.tensor([[2.0, 0.0], [-1.0, 0.0]]), ["a", "b"])
    # g0 = (0.5, 0), radius 0.25, g_w = g_2 direction: d = (0.25, 0), output 2 d
    torch.testing.assert_close(combined.gradient, torch.tensor([0.5, 0.0]))


def test_nash_mtl_at_a_pareto_stationary_point_gives_zero():
    out = NashMTL()(torch.tensor([[1.0, 0.0], [-2.0, 0.0]]), ["a", "b"])
    assert out.info["nash_mtl/stationary"] == 1.0
    assert torch.equal(out.gradient, torch.zeros(2))
    # a zero row bargains for nothing: the others decide
    out = NashMTL()(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]]), ["a", "b", "c"])
    assert out.info["nash_mtl/stationary"] == 0.0
    torch.testing.assert_close(out.gradient, torch.tensor([2.0, 2.0]))
