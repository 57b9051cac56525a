"""Agreement with torchjd 0.18 where it implements the same method (skipped where torchjd or
the solver it needs is not installed). torchjd's aggregators are on the mean's scale, ours on
the sum's: most comparisons are with k times its output. `pcd`, `krum`, `trimmed_mean`,
`cr_mogm` and `excess_mtl` are compared in their own files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from combiner_checks import (
    as64,
    cosine,
    examples,
    names_for,
    normalized,
    row_scale,
    run,
    well_posed,
)
from hypothesis import assume, example, given
from hypothesis import strategies as st
from strategies import gradient_matrices, matrix_sequences, ordinary_matrices, spread_matrices

from gradsurg.combiners import (
    IMTLG,
    MGDA,
    RLW,
    AlignedMTL,
    CAGrad,
    ConFIG,
    DualProj,
    FairGrad,
    GradDrop,
    GradVac,
    NashMTL,
    UPGrad,
    gramian,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems


@examples(30)
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


@examples(60)
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


@examples(30)
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


def test_dualproj_agrees_with_torchjd():
    """torchjd projects the mean (ours the sum) with quadprog on a regularized, normalized
    Gramian: its regularization set to 1e-12 and its normalization off."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    linalg = pytest.importorskip("torchjd.linalg")
    pytest.importorskip("quadprog")
    projector = linalg.QuadprogProjector(norm_eps=0.0, reg_eps=1e-12)
    generator = torch.Generator().manual_seed(4)
    for _ in range(20):
        m = torch.randn(4, 7, generator=generator, dtype=torch.float64)
        theirs = aggregation.DualProj(projector=projector)(m).numpy()
        ours = run(DualProj(), m)
        assert np.abs(ours - 4 * theirs).max() <= 1e-8 * np.abs(ours).max()


def test_aligned_mtl_agrees_with_torchjd():
    """torchjd weights the aligned rows by the mean (ours by 1): k times its output."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(5)
    for k in (2, 3, 5):
        m = torch.randn(k, 8, generator=generator, dtype=torch.float64)
        theirs = aggregation.AlignedMTL()(m).numpy()
        assert np.abs(run(AlignedMTL(), m) - k * theirs).max() <= 1e-10 * np.abs(theirs).max() * k


def torchjd_nash(aggregation, k: int, update_every: int = 1):
    return aggregation.NashMTL(n_tasks=k, max_norm=0.0, update_weights_every=update_every,
                               optim_niter=100)


@pytest.mark.parametrize("update_every", [1, 2])
def test_nash_mtl_agrees_with_torchjd_over_steps(update_every):
    """torchjd's Nash-MTL (the authors' cvxpy rounds, max_norm off, warm-started) weights the
    rows by a with a (G a) = 1; ours are the same up to the documented positive factor, also
    when weights are reused between updates. torchjd stops its rounds at a residual of 1e-3,
    hence the tolerance; it warns that its port has flaws, and with row norms far apart its
    rounds can stop far from the solution (even at negative utilities), which is why the rows
    here have comparable norms (the scipy reference in test_combiner_references.py covers
    the rest). cvxpy is slow:
    a few seeded sequences rather than a hypothesis search."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    pytest.importorskip("cvxpy")
    pytest.importorskip("ecos")
    generator = torch.Generator().manual_seed(update_every)
    for k in (2, 3, 4):
        theirs = torchjd_nash(aggregation, k, update_every)
        ours = NashMTL(update_every=update_every)
        for _ in range(3):
            matrix = torch.randn(k, 8, generator=generator, dtype=torch.float64) + 0.3
            m = as64(matrix)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = theirs.weighting(matrix).numpy()
            combined = ours(matrix, names_for(matrix))
            out = combined.gradient.numpy()
            if combined.info["nash_mtl/updated"]:
                expected = normalized(a, m) @ m
                assert np.abs(out - expected).max() <= 1e-2 * np.abs(expected).max()
            else:  # reused weights: normalized on the previous rows' norms, same direction
                assert cosine(out, a @ m) >= 1 - 1e-4


@examples(25)
@given(spread_matrices(min_rows=2), st.sampled_from([0.5, 2.0]))
@example(torch.cat([torch.diag(torch.tensor([2.0, 0.0267, 0.0267, 0.0267])),
                   torch.zeros(4, 1)], dim=1), 0.5)  # torchjd's w off by 7e-5 here
def test_fairgrad_agrees_with_torchjd(matrix, alpha):
    """torchjd's FairGrad solves G w = w^(-1/alpha) with scipy's least squares (the authors'
    code) and steps along the raw w; ours is that direction with the documented scale.

    torchjd's solve uses scipy's default tolerances on the unscaled Gramian, so on small rows
    it stops early (rows of norm ~0.03: relative residual 2e-4); the agreement asked for is
    1e-5 or ten times torchjd's own componentwise residual, whichever is larger. Exactness is
    checked against a tight solve in test_combiner_references.py's
    `test_fairgrad_solves_the_papers_system`."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    assume(well_posed("fairgrad", matrix))
    m = matrix.to(torch.float64)
    gram = (m @ m.T).numpy()
    w = aggregation.FairGradWeighting(alpha=alpha)(m @ m.T).numpy()
    target = w ** (-1 / alpha)
    # componentwise: normalized by the largest entry, a small row's residual hides (rows of
    # norm 2 and 0.027: 7e-7 that way, 2e-4 on the small rows, whose w is off by 7e-5)
    torchjd_residual = (np.abs(gram @ w - target) / np.abs(target)).max()
    expected = normalized(w, as64(m)) @ as64(m)
    bound = max(1e-5, 10 * torchjd_residual) * np.abs(expected).max()
    assert np.abs(run(FairGrad(alpha=alpha), m) - expected).max() <= bound


def test_config_agrees_with_torchjd():
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(6)
    for k in (2, 3, 5):
        m = torch.randn(k, 9, generator=generator, dtype=torch.float64)
        theirs = aggregation.ConFIG()(m).numpy()
        assert np.abs(run(ConFIG(), m) - theirs).max() <= 1e-10 * np.abs(theirs).max()
    # a zero row: torchjd turns its unit vector into 0, as ours leaves it out
    m = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    np.testing.assert_allclose(run(ConFIG(), m), aggregation.ConFIG()(m).numpy(), atol=1e-12)


@examples(25)
@given(gradient_matrices(min_rows=2), st.integers(0, 2**31 - 1))
def test_graddrop_agrees_with_torchjd(matrix, seed):
    """torchjd draws its uniforms from the global generator: seeded alike, the same masks."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    assume(bool((matrix != 0).any(dim=0).all()))  # torchjd's purity is 0/0 on zero columns
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        theirs = aggregation.GradDrop()(matrix)
    finally:
        torch.random.set_rng_state(state)
    ours = GradDrop(seed=seed)(matrix, names_for(matrix)).gradient
    torch.testing.assert_close(ours, theirs, rtol=8 * torch.finfo(matrix.dtype).eps, atol=0)


def test_rlw_agrees_with_torchjd_and_draws_fresh_weights():
    """torchjd's Random draws softmax(N(0, I)) from the global generator (mean scale)."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    generator = torch.Generator().manual_seed(7)
    matrices = [torch.randn(3, 5, generator=generator, dtype=torch.float64) for _ in range(4)]
    ours = RLW(seed=11)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(11)
        expected = [aggregation.Random()(m).numpy() for m in matrices]
    finally:
        torch.random.set_rng_state(state)
    outputs = [run(ours, m) for m in matrices]
    for out, theirs in zip(outputs, expected):
        assert np.abs(out - 3 * theirs).max() <= 1e-12 * np.abs(out).max()
    weights = [RLW(seed=11).bind(["a", "b", "c"]).weights(gramian(matrices[0]))[0]
               for _ in range(2)]
    torch.testing.assert_close(weights[0], weights[1])
    assert weights[0].sum().item() == pytest.approx(3.0)
    assert not np.allclose(outputs[0], RLW(seed=12)(matrices[0], ["a", "b", "c"]).gradient)
