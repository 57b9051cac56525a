"""What the combiner tests share: small helpers, the table of every built-in combiner with the
properties it has, and named asserts the test files reuse (not a test file itself).

The table (`TABLE`) drives the shared properties (test_combiner_properties.py), the state round
trip (test_combiner_state.py) and the plain-function checks (test_combiner_inputs.py); a new
built-in combiner must join it (test_combiner_properties.py checks that every registered one
has).

Which shared properties hold where, and why:
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
  * `sdmgrad` and `modo` take three batches' rows (`batches_per_step`): the shared properties
    feed them one batch three times over (`stacked`), where their cross matrix J1 J2^T is the
    Gramian. On that input all hold but scaling: `modo`'s step gamma A lambda grows with the
    squared norms (as `moco`'s), and `sdmgrad` divides A by s^2 + 1e-8 (s: the rows' mean
    norm), which is scale-free only while s^2 >> 1e-8. On genuinely independent batches
    (test_cross_batch.py) a common group order still does not matter and one group or
    identical rows still give batch 3's rows (times k), but the order of the batches does:
    batches 1 and 2 give A or A^T, batch 3 the direction. Neither method promises a step that
    conflicts with no group (one projected step, not MGDA's solution).
  * `krum` and `trimmed_mean` need at least 3 groups here (n_byzantine + 3, 2 trim + 1):
    each property is checked from that many rows on, and one group alone is refused
    (test_robust_combiners.py).
  * `sum`, `mean`, `project`, `merge`, `pcgrad` and `blockwise` are their definitions: they
    are checked against them (test_combiner_references.py, test_blockwise.py), not here.
Stateful and random methods are compared on fresh instances with the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import settings
from state_checks import through_a_weights_only_checkpoint

from gradsurg.combiners import (
    COMBINERS,
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
    Mean,
    Merge,
    MoCo,
    MoDo,
    NashMTL,
    PCGrad,
    Project,
    SDMGrad,
    Sum,
    TrimmedMean,
    UPGrad,
    gramian,
)
from gradsurg.combiners.blockwise import Blockwise


def examples(count: int) -> settings:
    """A hypothesis test's own budget: `count` examples, no deadline."""
    return settings(max_examples=count, deadline=None)


# ---- helpers --------------------------------------------------------------------------------


def names_for(matrix) -> list[str]:
    return [f"g{i}" for i in range(matrix.shape[0])]


def stacked(combiner, matrix: torch.Tensor) -> torch.Tensor:
    """The combiner's input for one batch's `[k, n]` rows: as they are, or, for a combiner
    that takes b batches per step, the same batch b times over (`[b k, n]`)."""
    return matrix.repeat(combiner.batches_per_step, 1)


def call(combiner, matrix: torch.Tensor):
    """The combiner on one batch's rows (`stacked`), named g0, g1, ..."""
    return combiner(stacked(combiner, matrix), names_for(matrix))


def run(combiner, matrix: torch.Tensor) -> np.ndarray:
    return call(combiner, matrix).gradient.to(torch.float64).numpy()


def as64(matrix: torch.Tensor) -> np.ndarray:
    return matrix.to(torch.float64).numpy()


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed for a solve on the Gramian of rows in this dtype."""
    return 1e-3 if dtype == torch.float32 else 1e-7


def vector_tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed for a closed form on the vectors (sum, project, pcgrad)."""
    return 1e-4 if dtype == torch.float32 else 1e-10


def floor(dtype: torch.dtype) -> float:
    """Absolute slack for results in the subnormal range, where relative error is meaningless."""
    return 4 * torch.finfo(dtype).tiny


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


def normalized(weights: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weights rescaled so that sum_i w_i ||g_i|| = sum_i ||g_i|| (the combiners' scale)."""
    norms = np.linalg.norm(m, axis=1)
    return weights * norms.sum() / (weights @ norms)


def exact_output(combiner, matrix: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The combiner's weights applied in float64, and the rounding allowance of each product
    out . g_i: tol * sum_j |w_j| ||g_j|| * ||g_i|| (the error a solve on the Gramian makes)."""
    weights, _ = combiner.bind(names_for(matrix)).weights(gramian(matrix))
    w, m = weights.numpy(), as64(matrix)
    norms = np.linalg.norm(m, axis=1)
    return w @ m, tolerance(matrix.dtype) * (np.abs(w) @ norms) * norms


def min_norm_reference(m: np.ndarray) -> np.ndarray:
    """Min-norm point of the rows' convex hull by enumerating faces.

    The optimum is the affine min-norm point of an affinely independent subset of rows whose
    weights come out non-negative; every such candidate is feasible, so the least is it.
    """
    import itertools

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


# ---- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StateCase:
    """A state round trip: `before` steps, a checkpoint, `after` steps on a fresh instance
    from `make_other` (another seed where there is one); `check(restored, uninterrupted,
    names)` asserts what else the state must carry."""

    make: Callable[[], object]
    make_other: Callable[[], object]
    names: tuple[str, ...] = ("final", "sd", "exit1")
    columns: int = 10
    before: int = 3
    after: int = 4
    check: Callable[[object, object, list[str]], None] | None = None


@dataclass(frozen=True)
class Facts:
    make: Callable[[], object]
    #: output on one row (and on k identical rows) relative to the row (their plain sum)
    sum_factor: float = 1.0
    order_free: bool = True
    homogeneous: bool = True
    #: fewest groups the method is defined for (Krum: n_byzantine + 3; trimmed mean: 2 trim + 1)
    min_rows: int = 1
    #: checked on the shared properties (False: the combiner is its definition, checked there)
    shared: bool = True
    #: the registry spec for a build over groups g0, g1, g2 (None: the bare name)
    spec: object = None
    #: how its state is checked through a checkpoint (None: it keeps no state across steps)
    state: StateCase | None = field(default=None)


def _gradvac_keeps(restored, uninterrupted, names) -> None:
    assert restored.names == names and restored.seed == 5
    torch.testing.assert_close(restored.targets, uninterrupted.targets, rtol=0, atol=0)


TABLE: dict[str, Facts] = {
    "sum": Facts(Sum, shared=False),
    "mean": Facts(Mean, shared=False),
    "project": Facts(lambda: Project(target="g0", reference="g1"), shared=False,
                     spec={"name": "project", "target": "g0", "reference": "g1"}),
    "merge": Facts(lambda: Merge(groups=["g1", "g2"], inner=UPGrad(), into="aux",
                                 then=Project(target="g0", reference="aux")), shared=False,
                   spec={"name": "merge", "groups": ["g1", "g2"], "inner": "upgrad",
                         "into": "aux",
                         "then": {"name": "project", "target": "g0", "reference": "aux"}}),
    "pcgrad": Facts(lambda: PCGrad(seed=0), shared=False,
                    state=StateCase(lambda: PCGrad(seed=7), lambda: PCGrad(seed=0),
                                    names=("g0", "g1", "g2", "g3"), before=1, after=1)),
    "blockwise": Facts(Blockwise, shared=False),  # test_blockwise.py
    "mgda": Facts(MGDA),
    "upgrad": Facts(UPGrad),
    "imtlg": Facts(IMTLG),
    "cagrad": Facts(lambda: CAGrad(c=0.5), sum_factor=1.5),
    "gradvac": Facts(lambda: GradVac(beta=0.5, seed=1), order_free=False,
                     state=StateCase(lambda: GradVac(beta=0.3, seed=5),
                                     lambda: GradVac(beta=0.3, seed=99),
                                     names=("final", "sd", "exit1", "exit2"), columns=12,
                                     after=3, check=_gradvac_keeps)),
    "dualproj": Facts(DualProj),
    "aligned_mtl": Facts(AlignedMTL),
    "nash_mtl": Facts(NashMTL, state=StateCase(lambda: NashMTL(update_every=2),
                                               lambda: NashMTL(update_every=2))),
    "config": Facts(ConFIG),
    "fairgrad": Facts(FairGrad),
    "graddrop": Facts(lambda: GradDrop(seed=3),
                      state=StateCase(lambda: GradDrop(seed=5), lambda: GradDrop(seed=99))),
    "rlw": Facts(lambda: RLW(seed=3), order_free=False,
                 state=StateCase(lambda: RLW(seed=5), lambda: RLW(seed=99))),
    "dbmtl": Facts(DBMTL, sum_factor=0.1,
                   state=StateCase(lambda: DBMTL(beta=0.7), lambda: DBMTL(beta=0.7))),
    "moco": Facts(MoCo, homogeneous=False,
                  state=StateCase(lambda: MoCo(beta=0.6, gamma=0.05),
                                  lambda: MoCo(beta=0.6, gamma=0.05))),
    # eps = 0: the normalization by sqrt(v + eps) is then exactly scale-free
    "pcd": Facts(lambda: PCD(eps=0.0), order_free=False,
                 state=StateCase(lambda: PCD(primary="sd", beta=0.5),
                                 lambda: PCD(primary="sd", beta=0.5))),
    "krum": Facts(lambda: Krum(n_selected=2), min_rows=3),
    "trimmed_mean": Facts(TrimmedMean, min_rows=3),
    # fresh: its first step is mgda's; its state includes the inner combiner's (nash_mtl's
    # last weights)
    "cr_mogm": Facts(lambda: CRMOGM(inner=MGDA(), alpha=0.5),
                     state=StateCase(lambda: CRMOGM(inner=NashMTL(update_every=2), alpha=0.6),
                                     lambda: CRMOGM(inner=NashMTL(update_every=2), alpha=0.6))),
    # its first step moves the weights by the raw excess risks, which grow with the rows
    "excess_mtl": Facts(ExcessMTL, homogeneous=False,
                        state=StateCase(lambda: ExcessMTL(eta=0.5, warmup_steps=2),
                                        lambda: ExcessMTL(eta=0.5, warmup_steps=2))),
    # three batches' rows (`stacked`); not scale-free: see the docstring
    "sdmgrad": Facts(SDMGrad, homogeneous=False,
                     state=StateCase(lambda: SDMGrad(lr=2.0, n_iter=5),
                                     lambda: SDMGrad(lr=2.0, n_iter=5))),
    "modo": Facts(MoDo, homogeneous=False,
                  state=StateCase(lambda: MoDo(gamma=0.2), lambda: MoDo(gamma=0.2))),
}
SHARED = [name for name, facts in TABLE.items() if facts.shared]
ORDER_FREE = [name for name in SHARED if TABLE[name].order_free]
SINGLE_GROUP = [name for name in SHARED if TABLE[name].min_rows == 1]
HOMOGENEOUS = [name for name in SHARED if TABLE[name].homogeneous]
STATEFUL = sorted(name for name, facts in TABLE.items() if facts.state is not None)


def build(name: str):
    """The combiner from its registry spec; one that splits columns by parameter (blockwise)
    gets a layout of two 2-number parameters in two layers over a 4-column matrix."""
    combiner = COMBINERS.build(TABLE[name].spec or name, where="combiner")
    if getattr(combiner, "needs_layout", False):
        from gradsurg.params import FlatLayout

        combiner.use_layout(FlatLayout.of([(f"layers.{i}.w", torch.nn.Parameter(torch.ones(2)))
                                           for i in range(2)]))
    return combiner


# ---- named asserts --------------------------------------------------------------------------


def assert_within_summation_bound(out, expected, matrix) -> None:
    """|out - exact| <= k * eps * sum_i |g_i|: the textbook bound for any summation order."""
    k = matrix.shape[0]
    eps = torch.finfo(matrix.dtype).eps
    bound = k * eps * matrix.to(torch.float64).abs().sum(0) + floor(matrix.dtype)
    error = (out.to(torch.float64) - expected).abs()
    assert bool((error <= bound).all()), f"error {error.max()} over bound"


def assert_finite_on_degenerate(combiner, matrix: torch.Tensor, *, info_named: bool = False):
    """Finite output of the input's shape and dtype; with `info_named`, info values are finite
    floats named `name/...`. Returns the output."""
    out = call(combiner, matrix)
    assert out.gradient.shape == (matrix.shape[1],)
    assert out.gradient.dtype == matrix.dtype
    assert torch.isfinite(out.gradient).all(), f"{combiner.name} gave non-finite output"
    if info_named:
        assert all(isinstance(v, float) and math.isfinite(v) for v in out.info.values())
        assert all(key.startswith(f"{combiner.name}/") for key in out.info)
    return out


def assert_keeps_a_single_group(make, matrix: torch.Tensor, factor: float = 1.0) -> None:
    """One row g gives `factor` g."""
    out = run(make(), matrix)
    expected = factor * as64(matrix)[0]
    bound = tolerance(matrix.dtype) * np.abs(expected).max() + 4 * torch.finfo(matrix.dtype).tiny
    assert np.abs(out - expected).max() <= bound


def assert_sums_identical_rows(make, row: torch.Tensor, k: int, factor: float = 1.0) -> None:
    """k copies of g give k g (times `factor`): the output is on the scale of `sum`."""
    out = run(make(), row.repeat(k, 1))
    expected = factor * k * as64(row)[0]
    assert np.abs(out - expected).max() <= tolerance(row.dtype) * np.abs(expected).max()


def assert_permutation_invariant(make, matrix: torch.Tensor, order: list[int]) -> None:
    """Fresh instances on the rows and on the rows in `order` give the same output."""
    out, shuffled = run(make(), matrix), run(make(), matrix[order])
    scale = np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(out - shuffled).max() <= tolerance(matrix.dtype) * scale


def assert_scales_linearly(make, matrix: torch.Tensor, factor: float) -> None:
    """Fresh instances: every row times `factor` > 0 gives the output times `factor`."""
    out, scaled = run(make(), matrix), run(make(), matrix * factor)
    scale = factor * np.abs(as64(matrix)).sum(0).max() * matrix.shape[0]
    assert np.abs(scaled - factor * out).max() <= tolerance(matrix.dtype) * scale


def assert_conflicts_with_no_group(combiner, matrix: torch.Tensor):
    """out . g_i >= 0 for every group, up to the rounding of a solve on the Gramian (the
    weights applied in float64). Returns the products, the output and the allowance."""
    out, allowance = exact_output(combiner, matrix)
    products = as64(matrix) @ out
    assert (products >= -allowance).all()
    return products, out, allowance


def assert_state_round_trips(case: StateCase) -> None:
    """`before` steps, the state through a weights_only checkpoint, a fresh instance (another
    seed where there is one): the next `after` steps equal an uninterrupted run's bit for
    bit, and `case.check` holds."""
    generator = torch.Generator().manual_seed(0)
    names = list(case.names)
    rows = len(names) * case.make().batches_per_step  # three batches' rows: sdmgrad, modo
    matrices = [torch.randn(rows, case.columns, generator=generator)
                for _ in range(case.before + case.after)]
    uninterrupted, first = case.make(), case.make()
    for matrix in matrices[: case.before]:
        uninterrupted(matrix, names)
        first(matrix, names)
    restored = case.make_other()
    restored.load_state_dict(through_a_weights_only_checkpoint(first.state_dict()))
    for matrix in matrices[case.before:]:
        expected = uninterrupted(matrix, names).gradient
        torch.testing.assert_close(restored(matrix, names).gradient, expected, rtol=0, atol=0)
    if case.check is not None:
        case.check(restored, uninterrupted, names)


def _tensors_in(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors_in(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors_in(v)]
    return []


def _leaf_matrix() -> torch.Tensor:
    rows = torch.tensor([[1.0, 0.2, -0.3, 0.0], [-0.6, 0.5, 0.1, 0.2], [0.1, -0.7, 0.4, 0.3]])
    return rows.requires_grad_()


def assert_builds_no_graph(name: str) -> None:
    """A direct call on a matrix that is part of a graph builds none (twice: the second call
    runs on state kept from the first), keeps none in its state, and gives the values of the
    same call on a plain tensor."""
    combiner = build(name)
    names = ["g0", "g1", "g2"][: 3 // combiner.batches_per_step]  # 3 rows: 1 group, 3 batches
    matrix = _leaf_matrix()
    for _ in range(2):
        out = combiner(matrix * 1.0, names)  # a non-leaf input, part of a graph
        assert not out.gradient.requires_grad and out.gradient.grad_fn is None, name
        assert torch.isfinite(out.gradient).all()
    for tensor in _tensors_in(combiner.state_dict()):
        assert not tensor.requires_grad and tensor.grad_fn is None, name
    fresh = build(name)
    plain = _leaf_matrix().detach()
    expected = fresh(plain, names).gradient
    again = build(name)
    assert torch.equal(again(_leaf_matrix(), names).gradient, expected), name


def simplex_projection(point: np.ndarray) -> np.ndarray:
    """The NumPy reference's projection onto the simplex: max(point - theta, 0) summing to 1,
    theta by bisection (not the sort the combiners use)."""
    low, high = point.min() - 1.0, point.max()
    for _ in range(200):
        theta = (low + high) / 2
        if np.maximum(point - theta, 0).sum() > 1:
            low = theta
        else:
            high = theta
    return np.maximum(point - (low + high) / 2, 0)
