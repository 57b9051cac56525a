"""Entropy early exit: entropy against numpy/math, exits on a hand-made example, sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradsurg.data.glue import get_task
from gradsurg.errors import ConfigError
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.evaluation.outcomes import expected_time_percent, select_exit_outputs
from gradsurg.multiexit.evaluation.sweeps import (
    DEFAULT_THRESHOLDS,
    ExitSweepPoint,
    per_exit_metrics,
    policy_sweep,
)
from gradsurg.multiexit.exit_loop import simulate_exits
from gradsurg.multiexit.policies import EntropyPolicy, prediction_entropy


def entropy_exit_layers(all_logits: torch.Tensor, threshold: float) -> torch.Tensor:
    return simulate_exits(EntropyPolicy(threshold), all_logits).exit_layers


def entropy_sweep(all_logits, labels, task, thresholds=None):
    return policy_sweep(all_logits, labels, get_task(task), EntropyPolicy(), thresholds)


def first_exit(confident: torch.Tensor) -> torch.Tensor:
    """Independent vectorized reference: first True along layers, else the last layer."""
    forced = confident.clone()
    forced[-1] = True
    return forced.to(torch.uint8).argmax(dim=0)

# [L=3, N=4, C=2]. Entropies: [0, 0] -> ln 2 = 0.693, [0.1, 0] -> 0.692, [2, 0] -> 0.365,
# [10, 0] -> 5.0e-4. So threshold 0.4 takes [2, 0] and [10, 0]; 0.01 takes only [10, 0].
HAND_LOGITS = torch.tensor([
    [[0.0, 0.0], [0.0, 10.0], [0.0, 0.0], [0.0, 0.0]],   # layer 1
    [[2.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0]],   # layer 2
    [[0.0, 10.0], [10.0, 0.0], [0.1, 0.0], [0.0, 2.0]],  # layer 3
])
HAND_LABELS = torch.tensor([1, 1, 0, 0])


def _numpy_entropy(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    return -(p * np.log(p)).sum(axis=-1)


def test_entropy_matches_math_for_one_row() -> None:
    logits = [1.0, 2.0, 3.0]
    z = sum(math.exp(x) for x in logits)
    expected = -sum(math.exp(x) / z * math.log(math.exp(x) / z) for x in logits)
    got = prediction_entropy(torch.tensor(logits, dtype=torch.float64))
    assert got.shape == ()
    assert float(got) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_entropy_matches_numpy(seed: int) -> None:
    logits = np.random.default_rng(seed).normal(scale=4.0, size=(3, 7, 5))
    got = prediction_entropy(torch.from_numpy(logits))
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got.numpy(), _numpy_entropy(logits), rtol=1e-10, atol=1e-12)
    got32 = prediction_entropy(torch.from_numpy(logits).float())
    np.testing.assert_allclose(got32.numpy(), _numpy_entropy(logits), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_entropy_is_stable_for_huge_and_equal_logits(dtype: torch.dtype) -> None:
    big = 1e4 if dtype != torch.float16 else 6e4  # near float16's max
    logits = torch.tensor([[big, 0.0, -big],   # one-hot-like
                           [big, big, big],    # uniform at a huge value
                           [0.0, 0.0, 0.0],    # uniform
                           [big, big, -big]],  # two-way tie
                          dtype=dtype)
    got = prediction_entropy(logits)
    assert torch.isfinite(got).all()
    assert got.dtype == torch.promote_types(dtype, torch.float32)
    expected = torch.tensor([0.0, math.log(3), math.log(3), math.log(2)], dtype=got.dtype)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert float(got[0]) == 0.0 and not math.copysign(1.0, float(got[0])) < 0  # not -0.0


def test_entropy_handles_masked_classes() -> None:
    got = prediction_entropy(torch.tensor([float("-inf"), 0.0, 0.0]))
    assert float(got) == pytest.approx(math.log(2))


def test_entropy_rejects_regression_outputs() -> None:
    with pytest.raises(ConfigError, match="classification task"):
        prediction_entropy(torch.zeros(4, 1))
    with pytest.raises(ConfigError, match="classification model"):
        entropy_exit_layers(torch.zeros(3, 4, 1), 0.1)
    with pytest.raises(ConfigError, match="classification model"):
        entropy_sweep(torch.zeros(3, 4, 1), torch.zeros(4), "stsb")


@pytest.mark.parametrize(("threshold", "exits"), [
    (0.4, [1, 0, 2, 2]),
    (0.01, [2, 0, 2, 2]),
    (0.0004, [2, 2, 2, 2]),  # below the entropy of [10, 0]
    (0.6925, [1, 0, 2, 2]),  # between [0.1, 0] (0.6919) and ln 2 (0.6931)
    (0.7, [0, 0, 0, 0]),     # above ln 2 = max entropy of 2 classes
])
def test_exit_layers_on_hand_made_example(threshold: float, exits: list[int]) -> None:
    got = entropy_exit_layers(HAND_LOGITS, threshold)
    assert got.dtype == torch.long
    assert got.tolist() == exits


def test_threshold_zero_runs_every_layer() -> None:
    logits = torch.tensor([[[50.0, -50.0]]]).expand(4, 6, 2)  # entropy exactly 0 everywhere
    exits = entropy_exit_layers(logits, 0)
    assert exits.tolist() == [3] * 6
    assert expected_time_percent(exits, 4) == 100.0


@pytest.mark.parametrize("threshold", [math.log(3) * 1.01, 1e9, math.inf])
def test_huge_threshold_exits_at_first_layer(threshold: float) -> None:
    logits = torch.zeros(5, 7, 3)  # entropy = ln 3, the maximum for 3 classes
    exits = entropy_exit_layers(logits, threshold)
    assert exits.tolist() == [0] * 7
    assert expected_time_percent(exits, 5) == pytest.approx(100 / 5)


@pytest.mark.parametrize("threshold", [-0.1, math.nan])
def test_bad_threshold_is_a_config_error(threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        EntropyPolicy(threshold)
    with pytest.raises(ConfigError, match="threshold"):
        entropy_sweep(HAND_LOGITS, HAND_LABELS, "sst2", (0.1, threshold))


def test_select_exit_outputs_picks_each_examples_layer() -> None:
    got = select_exit_outputs(HAND_LOGITS, torch.tensor([1, 0, 2, 2]))
    expected = torch.tensor([[2.0, 0.0], [0.0, 10.0], [0.1, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        select_exit_outputs(HAND_LOGITS, torch.tensor([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="4 examples"):
        select_exit_outputs(HAND_LOGITS, torch.tensor([0, 1]))


def test_expected_time_percent() -> None:
    assert expected_time_percent(torch.tensor([0, 1, 2]), 3) == pytest.approx(600 / 9)
    assert expected_time_percent(torch.tensor([1, 0, 2, 2]), 3) == pytest.approx(75.0)
    with pytest.raises(ValueError, match="zero examples"):
        expected_time_percent(torch.tensor([], dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        expected_time_percent(torch.tensor([2]), 2)


def test_sweep_metric_equals_metrics_of_hand_selected_predictions() -> None:
    points = entropy_sweep(HAND_LOGITS, HAND_LABELS, "mrpc", (0.0, 0.01, 0.4, 10.0))
    assert [p.value for p in points] == [0.0, 0.01, 0.4, 10.0]
    assert all(isinstance(p, ExitSweepPoint) for p in points)
    # Predictions read off HAND_LOGITS at the exits of test_exit_layers_on_hand_made_example
    # (argmax of a tie [0, 0] is class 0, torch's documented first maximal index).
    hand = {0.0: [1, 0, 0, 1], 0.01: [1, 1, 0, 1], 0.4: [0, 1, 0, 1], 10.0: [0, 1, 0, 0]}
    times = {0.0: 100.0, 0.01: 100 * (3 + 1 + 3 + 3) / 12, 0.4: 100 * (2 + 1 + 3 + 3) / 12,
             10.0: 100 / 3}
    counts = {0.0: [0, 0, 4], 0.01: [1, 0, 3], 0.4: [1, 1, 2], 10.0: [4, 0, 0]}
    for point in points:
        expected = compute_metrics(get_task("mrpc"), hand[point.value], HAND_LABELS.tolist())
        assert point.metric == pytest.approx(expected)
        assert point.time_percent == pytest.approx(times[point.value])
        assert point.exit_counts == counts[point.value]
    assert points[1].metric["accuracy"] == pytest.approx(0.75)
    assert points[2].metric["accuracy"] == pytest.approx(0.5)


def test_default_sweep_starts_with_the_full_model() -> None:
    logits = torch.randn(4, 20, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 2, (20,), generator=torch.Generator().manual_seed(1))
    points = entropy_sweep(logits, labels, "sst2")
    assert [p.value for p in points] == list(DEFAULT_THRESHOLDS)
    assert points[0].time_percent == 100.0
    assert points[0].exit_counts == [0, 0, 0, 20]
    assert points[0].metric == compute_metrics(get_task("sst2"), logits[-1].argmax(-1), labels)
    assert all(sum(p.exit_counts) == 20 for p in points)


def test_sweep_checks_the_task_width() -> None:
    with pytest.raises(ValueError, match="3 outputs"):
        entropy_sweep(HAND_LOGITS, HAND_LABELS, "mnli")


@settings(max_examples=40, deadline=None)
@given(
    logits=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(2, 4)).flatmap(
        lambda shape: arrays(np.float32, shape, elements=st.floats(-30, 30, width=32))),
    thresholds=st.lists(st.floats(0, 2), min_size=2, max_size=2).map(sorted),
)
def test_exits_are_monotone_in_the_threshold(logits: np.ndarray,
                                             thresholds: list[float]) -> None:
    all_logits = torch.from_numpy(logits)
    num_layers = all_logits.shape[0]
    low, high = thresholds
    exits_low = entropy_exit_layers(all_logits, low)
    exits_high = entropy_exit_layers(all_logits, high)
    entropy = prediction_entropy(all_logits)
    assert exits_high.tolist() == first_exit(entropy < high).tolist()
    assert (exits_high <= exits_low).all()  # a larger threshold never exits later
    assert (expected_time_percent(exits_high, num_layers)
            <= expected_time_percent(exits_low, num_layers))
    # and the exit is the first layer under the threshold, else the last
    for n, layer in enumerate(exits_high.tolist()):
        assert (entropy[:layer, n] >= high).all()
        assert layer == num_layers - 1 or entropy[layer, n] < high


def test_per_exit_metrics_for_classification() -> None:
    got = per_exit_metrics(HAND_LOGITS, HAND_LABELS, get_task("sst2"))
    assert len(got) == 3
    for layer, metrics in enumerate(got):
        assert metrics == compute_metrics(get_task("sst2"), HAND_LOGITS[layer].argmax(-1),
                                          HAND_LABELS)
    assert got[2] == {"accuracy": pytest.approx(0.5)}  # predictions [1, 0, 0, 1]


def test_per_exit_metrics_for_regression() -> None:
    labels = torch.tensor([0.5, 1.0, 2.5, 4.0, 4.5])
    all_logits = torch.stack([
        (2 * labels + 1)[:, None],        # a perfect linear fit
        (-labels)[:, None],               # perfectly reversed
        torch.full((5, 1), 3.0),          # constant: correlations undefined -> None
    ])
    got = per_exit_metrics(all_logits, labels, get_task("stsb"))
    assert got[0] == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    assert got[1] == {"pearson": pytest.approx(-1.0), "spearman": pytest.approx(-1.0)}
    assert got[2] == {"pearson": None, "spearman": None}
    with pytest.raises(ValueError, match="1 outputs"):
        per_exit_metrics(torch.zeros(2, 5, 2), labels, get_task("stsb"))
