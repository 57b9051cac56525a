"""Scoring a set of exits: one implementation shared by the offline sweeps and `gradsurg eval`."""

from __future__ import annotations

import pytest
import torch

from gradsurg.data.glue import get_task
from gradsurg.devices import to_device
from gradsurg.metrics import compute_metrics
from gradsurg.multiexit.evaluation.outcomes import (
    exit_histogram,
    predictions,
    score_exits,
    select_exit_outputs,
)
from gradsurg.multiexit.evaluation.sweeps import operating_point
from gradsurg.multiexit.exit_loop import simulate_exits
from gradsurg.multiexit.policies import EntropyPolicy

# [L=3, N=4, C=2]: hand-made so each example's exit and answer are known.
LOGITS = torch.tensor([
    [[4.0, 0.0], [0.0, 0.1], [0.0, 0.2], [0.1, 0.0]],
    [[0.0, 1.0], [0.0, 4.0], [0.3, 0.0], [0.0, 0.1]],
    [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]],
])
LABELS = torch.tensor([0, 1, 1, 1])


def test_predictions_are_argmax_for_classes_and_the_score_for_regression() -> None:
    assert predictions(LOGITS[0], get_task("sst2")).tolist() == [0, 1, 1, 0]
    scores = torch.tensor([[2.5], [4.0]])
    assert predictions(scores, get_task("stsb")).tolist() == [2.5, 4.0]


def test_exit_histogram_counts_every_exit_including_empty_ones() -> None:
    assert exit_histogram(torch.tensor([0, 2, 2, 0, 2]), 4) == [2, 0, 3, 0]
    with pytest.raises(ValueError, match=r"exit layers must be in \[0, 3\)"):
        exit_histogram(torch.tensor([3]), 3)


def test_score_exits_by_hand() -> None:
    exits = torch.tensor([0, 1, 2, 2])
    outcome = score_exits(select_exit_outputs(LOGITS, exits), exits, LABELS, get_task("sst2"),
                          num_layers=3)
    # answers: example 0 at exit 0 -> 0, 1 at exit 1 -> 1, 2 and 3 at exit 2 -> 1 and 0
    assert outcome.metric == compute_metrics(get_task("sst2"), torch.tensor([0, 1, 1, 0]),
                                             LABELS)
    assert outcome.metric["accuracy"] == pytest.approx(0.75)
    assert outcome.time_percent == pytest.approx(100 * (1 + 2 + 3 + 3) / 12)
    assert outcome.exit_counts == [1, 1, 2]


def test_a_sweep_point_is_the_outcome_of_the_simulated_exits() -> None:
    policy = EntropyPolicy(threshold=0.3)
    exits = simulate_exits(policy, LOGITS).exit_layers
    outcome = score_exits(select_exit_outputs(LOGITS, exits), exits, LABELS, get_task("sst2"),
                          num_layers=3)
    point = operating_point(policy, 0.3, LOGITS, LABELS, get_task("sst2"))
    assert (point.metric, point.time_percent, point.exit_counts) == (
        outcome.metric, outcome.time_percent, outcome.exit_counts)


def test_to_device_moves_every_tensor_and_keeps_the_names() -> None:
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "labels": torch.zeros(2)}
    moved = to_device(batch, torch.device("meta"))
    assert list(moved) == ["input_ids", "labels"]
    assert all(t.device.type == "meta" for t in moved.values())
    assert moved["input_ids"].dtype == torch.long
