"""DualProj, Aligned-MTL, Nash-MTL, ConFIG, FairGrad, GradDrop, RLW, DB-MTL and MoCo: torchjd
0.18 where it implements the same method, and plain numpy/scipy renderings of the papers'
formulas otherwise. The properties every combiner shares: test_combiner_properties.py.
Stateful and random methods are compared on fresh instances with the same seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import settings

from gradsurg.combiners import (
    COMBINERS,
    CRMOGM,
    DBMTL,
    PCD,
    RLW,
    ExcessMTL,
    GradDrop,
    MoCo,
    NashMTL,
)
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # k x k problems

FAST = settings(max_examples=25, deadline=None)
SLOW = settings(max_examples=10, deadline=None)



# ---- dualproj -------------------------------------------------------------------------------








# ---- aligned-mtl ----------------------------------------------------------------------------










# ---- nash-mtl and fairgrad ------------------------------------------------------------------


def normalized(weights: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Weights rescaled so that sum_i w_i ||g_i|| = sum_i ||g_i|| (the combiners' scale)."""
    norms = np.linalg.norm(m, axis=1)
    return weights * norms.sum() / (weights @ norms)
















# ---- config ---------------------------------------------------------------------------------






# ---- graddrop -------------------------------------------------------------------------------










# ---- rlw -----------------------------------------------------------------------------------




# ---- dbmtl and moco: multi-step references --------------------------------------------------














# ---- state through a weights_only checkpoint ------------------------------------------------

STATEFUL = {
    "nash_mtl": (lambda: NashMTL(update_every=2), lambda: NashMTL(update_every=2)),
    "graddrop": (lambda: GradDrop(seed=5), lambda: GradDrop(seed=99)),
    "rlw": (lambda: RLW(seed=5), lambda: RLW(seed=99)),
    "dbmtl": (lambda: DBMTL(beta=0.7), lambda: DBMTL(beta=0.7)),
    "moco": (lambda: MoCo(beta=0.6, gamma=0.05), lambda: MoCo(beta=0.6, gamma=0.05)),
    "pcd": (lambda: PCD(primary="sd", beta=0.5), lambda: PCD(primary="sd", beta=0.5)),
    # the inner combiner's state too: nash_mtl's last weights
    "cr_mogm": (lambda: CRMOGM(inner=NashMTL(update_every=2), alpha=0.6),
                lambda: CRMOGM(inner=NashMTL(update_every=2), alpha=0.6)),
    "excess_mtl": (lambda: ExcessMTL(eta=0.5, warmup_steps=2),
                   lambda: ExcessMTL(eta=0.5, warmup_steps=2)),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_state_round_trip_through_a_weights_only_checkpoint(name, tmp_path):
    """Three steps, a checkpoint, a fresh instance (another seed where there is one): the
    next steps equal an uninterrupted run's bit for bit."""
    make, make_other = STATEFUL[name]
    generator = torch.Generator().manual_seed(0)
    matrices = [torch.randn(3, 10, generator=generator) for _ in range(7)]
    names = ["final", "sd", "exit1"]
    uninterrupted, first = make(), make()
    for matrix in matrices[:3]:
        uninterrupted(matrix, names)
        first(matrix, names)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    restored = make_other()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for matrix in matrices[3:]:
        expected = uninterrupted(matrix, names).gradient
        torch.testing.assert_close(restored(matrix, names).gradient, expected, rtol=0, atol=0)


def test_nash_mtl_reuses_its_weights_between_updates():
    generator = torch.Generator().manual_seed(1)
    first, second = (torch.randn(2, 6, generator=generator, dtype=torch.float64) for _ in "ab")
    combiner = NashMTL(update_every=2)
    combiner(first, ["a", "b"])
    weights = combiner.last_weights.clone()
    out = combiner(second, ["a", "b"])
    assert out.info["nash_mtl/updated"] == 0.0
    torch.testing.assert_close(out.gradient, weights @ second)
    assert combiner(second, ["a", "b"]).info["nash_mtl/updated"] == 1.0


def test_tracked_rows_follow_group_names():
    """A group seen for the first time starts fresh; the others keep their averages."""
    combiner = DBMTL(beta=0.5)
    combiner(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), ["a", "b"])
    combiner(torch.tensor([[0.0, 4.0], [2.0, 0.0], [4.0, 4.0]]), ["c", "a", "b"])
    rows = combiner.tracked.rows
    torch.testing.assert_close(rows, torch.tensor([[0.0, 2.0], [1.5, 0.0], [2.0, 2.5]]))
    with pytest.raises(ValueError, match="selected parameters changed"):
        combiner(torch.zeros(3, 5), ["c", "a", "b"])


# ---- construction ---------------------------------------------------------------------------


def test_options_reach_the_combiner_by_name():
    assert COMBINERS.build({"name": "fairgrad", "alpha": 0.5}, where="combiner").alpha == 0.5
    assert COMBINERS.build({"name": "moco", "gamma": 0.3}, where="combiner").gamma == 0.3
    nash = COMBINERS.build({"name": "nash_mtl", "update_every": 4}, where="combiner")
    assert nash.update_every == 4


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"name": "fairgrad", "alpha": 0}, r"'fairgrad': alpha must be a finite number > 0, got 0"),
        ({"name": "fairgrad", "alpha": math.inf}, r"'fairgrad': alpha must"),
        ({"name": "dbmtl", "beta": 1.0}, r"'dbmtl': beta must be a number in \[0, 1\)"),
        ({"name": "moco", "beta": 0}, r"'moco': beta must be a number in \(0, 1\]"),
        ({"name": "moco", "gamma": -1}, r"'moco': gamma must be a finite number > 0"),
        ({"name": "moco", "rho": "x"}, r"'moco': rho must be a finite number >= 0"),
        ({"name": "nash_mtl", "update_every": 0}, r"'nash_mtl': update_every must be an integer"),
        ({"name": "graddrop", "seed": 1.5}, r"'graddrop': seed must be an integer"),
        ({"name": "rlw", "seed": True}, r"'rlw': seed must be an integer"),
        ({"name": "dualproj", "c": 1}, r"combiner \(combiner 'dualproj'\).*'c'"),
        ({"name": "aligned_mtl", "scale_mode": "min"}, r"combiner \(combiner 'aligned_mtl'\)"),
        ({"name": "config", "weights": [1]}, r"combiner \(combiner 'config'\)"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        COMBINERS.build(spec, where="combiner")
