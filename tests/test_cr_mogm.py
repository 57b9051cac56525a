"""`cr_mogm` (CR-MOGM's moving average of another combiner's weights): a numpy rendering of
the EMA over steps, torchjd 0.18's `CRMOGMWeighting` step by step, groups kept by name, errors
and training runs; state through a checkpoint: test_combiner_state.py; bad options:
test_combiner_options.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gradsurg.combiners import CRMOGM, MGDA, DualProj, Mean, UPGrad
from gradsurg.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["final", "sd", "exit1"]


def matrices(steps: int, k: int = 3, n: int = 7, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(k, n, generator=generator, dtype=torch.float64) for _ in range(steps)]


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("inner", [MGDA, UPGrad, DualProj, Mean])
def test_the_output_is_the_moving_average_of_the_inner_weights(alpha, inner):
    """w_t = alpha w_{t-1} + (1 - alpha) w_hat_t, w_0 = w_hat_1, output w_t @ G (numpy)."""
    combiner = CRMOGM(inner=inner(), alpha=alpha)
    smoothed = None
    for matrix in matrices(5):
        m = matrix.numpy()
        fresh = inner().bind(NAMES)
        if inner is Mean:
            w_hat = np.array(fresh.linear_weights())
        else:
            w_hat = fresh.weights(matrix @ matrix.T)[0].numpy()
        smoothed = w_hat if smoothed is None else alpha * smoothed + (1 - alpha) * w_hat
        out = combiner(matrix, NAMES).gradient.numpy()
        np.testing.assert_allclose(out, smoothed @ m, rtol=1e-12, atol=1e-12)
        if alpha == 0.0:
            np.testing.assert_allclose(out, fresh(matrix, NAMES).gradient.numpy(), rtol=1e-12)


def test_agrees_with_torchjd_step_by_step():
    """k times torchjd's CRMOGMWeighting around UPGrad (its quadprog projector, regularization
    1e-12) and around the mean, six steps."""
    aggregation = pytest.importorskip("torchjd.aggregation")
    linalg = pytest.importorskip("torchjd.linalg")
    projector = linalg.QuadprogProjector(norm_eps=0.0, reg_eps=1e-12)
    pairs = [
        (CRMOGM(inner=UPGrad(), alpha=0.7), aggregation.GramianWeightedAggregator(
            aggregation.CRMOGMWeighting(aggregation.UPGradWeighting(projector=projector),
                                        alpha=0.7))),
        (CRMOGM(inner="mean", alpha=0.7), aggregation.WeightedAggregator(
            aggregation.CRMOGMWeighting(aggregation.MeanWeighting(), alpha=0.7))),
    ]
    for ours, theirs in pairs:
        for matrix in matrices(6, seed=1):
            expected = 3 * theirs(matrix) if ours.inner.name == "upgrad" else theirs(matrix)
            torch.testing.assert_close(ours(matrix, NAMES).gradient, expected, rtol=1e-9,
                                       atol=1e-10)


def test_initial_weights_start_the_average():
    first = matrices(1)[0]
    combiner = CRMOGM(inner=UPGrad(), alpha=0.5, initial={"final": 1.0, "sd": 0.0, "exit1": 2.0})
    w_hat = UPGrad().weights(first @ first.T)[0]
    expected = (0.5 * torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64) + 0.5 * w_hat) @ first
    torch.testing.assert_close(combiner(first, NAMES).gradient, expected)


def test_averages_are_kept_by_group_name():
    """A group seen for the first time starts from its current weight; the others keep theirs."""
    combiner = CRMOGM(inner="sum", alpha=0.5)
    combiner(torch.eye(2, dtype=torch.float64), ["a", "b"])
    assert combiner.smoothed == {"a": 1.0, "b": 1.0}
    out = combiner(torch.eye(3, dtype=torch.float64), ["c", "b", "a"])
    torch.testing.assert_close(out.gradient, torch.ones(3, dtype=torch.float64))
    assert out.info["cr_mogm/change"] == 0.0


def test_initial_must_name_every_group():
    with pytest.raises(ConfigError, match=r"initial must give a weight for each loss group"):
        CRMOGM(initial={"final": 1.0})(torch.ones(2, 3), ["final", "sd"])


def test_trains_the_digits_recipe(tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", ["combiner={name: cr_mogm, inner: mgda}",
                                               "epochs=2"])
    results = train(config, tmp_path)
    assert results["exit_accuracy"][-1] > 0.6, results["exit_accuracy"]  # chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["cr_mogm/change"]) for line in lines)
