"""Combiner state: every stateful combiner through a weights_only checkpoint (the table in
combiner_checks.py says which and how), and state kept by group name. `pcd`, `cr_mogm`,
`excess_mtl` and `blockwise` keep theirs by name too: their own files check it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from combiner_checks import STATEFUL, TABLE, assert_state_round_trips

from gradsurg.combiners import DBMTL, GradVac, NashMTL

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", STATEFUL)
def test_state_round_trip_through_a_weights_only_checkpoint(name):
    """A few steps, a checkpoint, a fresh instance (another seed where there is one): the
    next steps equal an uninterrupted run's bit for bit."""
    assert_state_round_trips(TABLE[name].state)


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
