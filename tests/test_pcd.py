"""`pcd` (Priority-Constrained Descent): the paper's QP solved by cvxpy, torchjd 0.18's `PCD`
step by step, the named primary, the special cases, groups checked when bound, and training
runs (bad options: test_combiner_options.py)."""

from __future__ import annotations

import json
import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from combiner_checks import as64, names_for, run
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import ordinary_matrices

from gradsurg.combiners import PCD, Project
from gradsurg.combiners.pcd import priority_qp
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

FEW = settings(max_examples=25, deadline=None)


def pcd_reference(m: np.ndarray, taus: np.ndarray, eps: float, primary: int = 0):
    """The paper's first step in cvxpy: normalized rows, the QP on d itself (not the Gramian),
    the result rescaled to k ||g_p||. None when the solver is unsure (the problem is then too
    close to infeasible to compare)."""
    k, n = m.shape
    roots = np.sqrt((m * m).sum(1) + eps)
    scaled = m / np.where(roots > 0, roots, 1.0)[:, None]  # a zero row stays 0
    if not scaled[primary].any():
        return 0 * m[primary], True
    d = cp.Variable(n)
    constraints = [scaled[j] @ d >= taus[j] * scaled[j] @ scaled[j]
                   for j in range(k) if j != primary]
    problem = cp.Problem(cp.Minimize(cp.sum_squares(d - scaled[primary])), constraints)
    try:
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14)
    except cp.error.SolverError:  # the reference itself failed: nothing to compare with
        return None, None
    if problem.status == cp.INFEASIBLE:
        return k * m[primary], False
    if problem.status != cp.OPTIMAL:
        return None, None
    direction = d.value
    if np.linalg.norm(direction) < 1e-6:  # d = 0: its direction is up to the solver's rounding
        return None, None
    return k * np.linalg.norm(m[primary]) * direction / np.linalg.norm(direction), True


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@FEW
@given(matrix=ordinary_matrices(min_rows=2, max_rows=5, max_cols=8).map(lambda m: m.double()),
       tau=st.floats(0.0, 0.6), primary=st.integers(0, 4), eps=st.sampled_from([0.0, 1e-8]))
def test_pcd_solves_the_papers_qp(matrix, tau, primary, eps):
    """First step against cvxpy (Clarabel) on the primal problem in d."""
    k = matrix.shape[0]
    primary %= k
    names = names_for(matrix)
    out = PCD(primary=names[primary], tau=tau, eps=eps)(matrix, names)
    expected, feasible = pcd_reference(as64(matrix), np.full(k, tau), eps, primary)
    assume(expected is not None)
    assert out.info["pcd/infeasible"] == float(not feasible)
    scale = k * np.linalg.norm(as64(matrix)[primary])
    assert np.abs(out.gradient.numpy() - expected).max() <= 1e-5 * scale


@FEW
@given(matrix=ordinary_matrices(min_rows=2, max_rows=6, max_cols=8).map(lambda m: m.double()),
       tau=st.floats(0.0, 1.0))
def test_the_qp_meets_its_kkt_conditions(matrix, tau):
    """d = g_0 + sum mu_j g_j with mu >= 0 meets every constraint, tight where mu_j > 0."""
    m = as64(matrix)
    gram = torch.from_numpy(m @ m.T)
    k = m.shape[0]
    mu, feasible, _ = priority_qp(gram, torch.full((k - 1,), tau, dtype=torch.float64))
    assume(feasible)
    d = m[0] + mu.numpy() @ m[1:]
    slack = m[1:] @ d - tau * (m[1:] ** 2).sum(1)
    size = np.linalg.norm(m, axis=1).max() * (np.linalg.norm(m[0]) + np.abs(mu.numpy())
                                             @ np.linalg.norm(m[1:], axis=1))
    assert (mu.numpy() >= 0).all()
    # a few eps x ||g_j||^2: rounding of the constraint's own right-hand side, not a violation
    # (hypothesis found tau = 1e-93, 1.4e-45 and 2.2e-16 against a zero primary, where the
    # solver keeps mu = 0)
    dust = 8 * np.finfo(np.float64).eps * (m[1:] ** 2).sum(1)
    assert (slack >= -1e-8 * size - dust).all()
    assert (np.abs(mu.numpy() * slack) <= 1e-8 * size * (1 + mu.numpy())).all()


def torchjd_pcd(**options):
    pytest.importorskip("torchjd")
    from torchjd.aggregation import PCD as TorchjdPCD

    return TorchjdPCD(**options)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("tau", [0.02, 0.4, "vector"])
def test_pcd_agrees_with_torchjd_step_by_step(k, tau):
    """Six steps on the same matrices: k times torchjd's output each step (the EMA too)."""
    generator = torch.Generator().manual_seed(k)
    if tau == "vector":
        taus = torch.linspace(0.0, 0.9, k - 1, dtype=torch.float64)
        ours = PCD(primary="g0", tau={f"g{i + 1}": float(t) for i, t in enumerate(taus)},
                   beta=0.7)
        theirs = torchjd_pcd(tau=taus, beta=0.7)
    else:
        ours, theirs = PCD(tau=tau, beta=0.7), torchjd_pcd(tau=tau, beta=0.7)
    for step in range(6):
        matrix = torch.randn(k, 9, generator=generator, dtype=torch.float64)
        matrix *= torch.logspace(-2, 2, k, dtype=torch.float64)[:, None] ** (step % 2)
        out = ours(matrix, [f"g{i}" for i in range(k)]).gradient
        torch.testing.assert_close(out, k * theirs(matrix), rtol=1e-9, atol=1e-12)


def test_pcd_follows_the_named_primary_whatever_the_row_order():
    generator = torch.Generator().manual_seed(3)
    matrix = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    names = ["final", "sd", "exit1", "exit2"]
    out = PCD(primary="sd", tau=0.3)(matrix, names).gradient
    expected = 4 * torchjd_pcd(tau=0.3)(matrix[[1, 0, 2, 3]])
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-12)
    for order in ([3, 1, 0, 2], [2, 3, 0, 1]):
        shuffled = PCD(primary="sd", tau=0.3)(matrix[order], [names[i] for i in order])
        torch.testing.assert_close(shuffled.gradient, out, rtol=1e-10, atol=1e-12)


def test_pcd_with_tau_zero_on_two_groups_is_projects_projected_target():
    """tau = 0: the constraint is 'no conflict', so d is the primary projected off the other
    group when they conflict (RomeBERT's `project`), renormalized to 2 ||g_p||."""
    final = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    sd = torch.tensor([-2.0, 0.5, 1.0], dtype=torch.float64)  # conflicts with final
    matrix = torch.stack([final, sd])
    out = PCD(primary="final", tau=0.0)(matrix, ["final", "sd"])
    projected = Project(target="final", reference="sd")(matrix, ["final", "sd"]).gradient - sd
    expected = 2 * final.norm() * projected / projected.norm()
    torch.testing.assert_close(out.gradient, expected, rtol=1e-12, atol=1e-14)
    assert out.info["pcd/active"] == 1.0 and abs(float(out.gradient @ sd)) < 1e-12
    # without conflict, or with tau met already, the primary is followed as it is
    agreeing = torch.stack([final, final + 0.1])
    torch.testing.assert_close(PCD(tau=0.5)(agreeing).gradient, 2 * final)


def test_pcd_special_cases():
    names = ["p", "a", "b"]
    primary = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    opposite = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    # two opposite secondaries cannot both progress: constraints dropped, k g_p
    out = PCD(tau=0.1)(torch.stack([primary, opposite, -opposite]), names)
    assert out.info["pcd/infeasible"] == 1.0
    torch.testing.assert_close(out.gradient, 3 * primary)
    # a zero primary gives 0
    zero = PCD()(torch.stack([0 * primary, opposite, primary]), names)
    assert not zero.gradient.any()
    # the primary opposite to a secondary that must not lose: d = 0
    out = PCD(tau=0.0)(torch.stack([primary, -primary]), ["p", "a"])
    assert not out.gradient.any() and out.info["pcd/active"] == 1.0
    # ... that needs all its own progress: d follows the secondary
    out = PCD(tau=1.0)(torch.stack([primary, -primary]), ["p", "a"])
    torch.testing.assert_close(out.gradient, -2 * primary)
    # a non-finite Gramian: nan out, the averages untouched
    combiner = PCD()
    combiner(torch.stack([primary, opposite]), ["p", "a"])
    before = combiner.averages.clone()
    bad = combiner(torch.stack([primary, opposite * math.inf]), ["p", "a"])
    assert torch.isnan(bad.gradient).all() and torch.equal(combiner.averages, before)


def test_pcd_keeps_its_averages_by_group_name():
    """A group seen for the first time starts fresh; the others keep their averages."""
    combiner = PCD(beta=0.5)
    combiner(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), ["a", "b"])
    combiner(torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0]]), ["c", "b", "a"])
    torch.testing.assert_close(combiner.averages,
                               torch.tensor([0.5, 0.5 * 4 * 0.5 + 0.5 * 2, 0.5 * 9 * 0.5 + 0.5 * 4],
                                            dtype=torch.float64))
    assert combiner.steps.tolist() == [1, 2, 2]
    assert combiner.row == 0  # no primary named: the first row


def test_groups_are_checked_when_bound():
    with pytest.raises(ConfigError, match=r"primary group 'final' is not among"):
        PCD(primary="final")(torch.ones(2, 3), ["a", "b"])
    with pytest.raises(ConfigError, match=r"tau gives no value for group 'b'"):
        PCD(primary="a", tau={"c": 0.1})(torch.ones(3, 3), ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"pass the rows' names"):
        PCD(primary="a")(torch.ones(2, 3))
    assert PCD(primary="a", tau={"b": 0.1}).group_names() == ["a", "b"]


def test_float32_rows_agree_with_float64():
    generator = torch.Generator().manual_seed(4)
    matrix = torch.randn(4, 50, generator=generator)
    single = run(PCD(tau=0.2), matrix)
    double = run(PCD(tau=0.2), matrix.double())
    assert np.abs(single - double).max() <= 1e-4 * np.abs(double).max()


# ---- training (the tiny RomeBERT recipe: test_multiexit_glue.py, every combiner) ----------


def test_pcd_trains_the_digits_recipe(tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", ["combiner={name: pcd, primary: final, tau: 0.1}",
                                               "epochs=2"])
    results = train(config, tmp_path)
    accuracies = results["exit_accuracy"]
    assert all(math.isfinite(a) for a in accuracies)
    assert accuracies[-1] > 0.6, accuracies  # chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {"final", "sd", "pcd/active"} <= set(lines[0])
    assert results["combiner"] == "pcd"
