"""Held-out budgets: the setting is chosen on one half of the evaluation set and scored on the
other, against a plain NumPy rendering of that procedure (entropy thresholds, accuracy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsurg.data.glue import get_task
from gradsurg.multiexit.evaluation.held_out import held_out_best_within, split_halves
from gradsurg.multiexit.policies import EntropyPolicy, ExitPolicy, prediction_entropy


def reference(logits: np.ndarray, labels: np.ndarray, budget: float, halves
              ) -> tuple[float, float] | None:
    """Try every threshold at which an example of the choosing half changes exit (each running
    minimum of its entropies, and one above them all: nobody leaves early), keep the most
    accurate one within the budget (fastest among equals), score it on the other half."""
    layers = logits.shape[0]
    entropy = prediction_entropy(torch.from_numpy(logits)).numpy()  # [L, N]
    answers = logits.argmax(axis=-1)  # [L, N]

    def outcome(threshold: float, index: np.ndarray) -> tuple[float, float]:
        leaves = entropy[:-1, index] < threshold  # [L-1, n]
        exits = np.where(leaves.any(axis=0), leaves.argmax(axis=0), layers - 1)
        right = answers[exits, index] == labels[index]
        return float(right.mean()), float(100 * (exits + 1).mean() / layers)

    results = []
    for choose, score in (halves, halves[::-1]):
        minima = np.minimum.accumulate(entropy[:-1, choose], axis=0)
        candidates = [*np.unique(minima), np.nextafter(minima.max(), np.float32(np.inf))]
        fitting = []
        for threshold in candidates:
            accuracy, time = outcome(threshold, choose)
            if time <= budget + 1e-9:
                fitting.append((accuracy, -time, threshold))
        if not fitting:
            return None
        results.append(outcome(max(fitting)[2], score))
    return float(np.mean([r[0] for r in results])), float(np.mean([r[1] for r in results]))


def test_halves_are_disjoint_cover_everything_and_repeat():
    first, second = split_halves(11)
    assert len(first) == 5 and len(second) == 6
    assert sorted([*first.tolist(), *second.tolist()]) == list(range(11))
    again = split_halves(11)
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])
    assert not torch.equal(split_halves(11, seed=1)[0], first)
    with pytest.raises(ValueError, match="at least 2 examples"):
        split_halves(1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 4), st.integers(4, 30),
       st.sampled_from([30.0, 50.0, 60.0, 100.0]))
def test_held_out_budget_equals_the_numpy_rendering(seed, layers, examples, budget):
    generator = np.random.default_rng(seed)
    logits = generator.normal(0, 2, size=(layers, examples, 2)).astype(np.float32)
    labels = generator.integers(0, 2, size=examples)
    halves = tuple(h.numpy() for h in split_halves(examples))
    found = held_out_best_within(torch.from_numpy(logits), torch.from_numpy(labels),
                                 get_task("sst2"), EntropyPolicy, {}, [budget])[f"{budget:g}"]
    expected = reference(logits, labels, budget, halves)
    if expected is None:
        assert found is None
    else:
        assert found is not None
        assert found["accuracy"] == pytest.approx(expected[0], abs=1e-6)
        assert found["time_percent"] == pytest.approx(expected[1], abs=1e-6)


def test_a_setting_that_only_fits_the_noise_of_one_half_is_not_rewarded():
    """Exit 1 is a coin flip whose confident answers happen to be right on one half and wrong on
    the other: in-sample, stopping there looks free; held out, it costs what it really costs."""
    examples = 40
    halves = split_halves(examples)
    labels = torch.zeros(examples, dtype=torch.long)
    first = torch.zeros(examples, 2)
    first[halves[0], 0] = 9.0  # confident and right on the first half
    first[halves[1], 1] = 9.0  # confident and wrong on the second
    final = torch.tensor([[5.0, 0.0]]).repeat(examples, 1)  # the last exit is always right
    logits = torch.stack([first, final])
    within = held_out_best_within(logits, labels, get_task("sst2"), EntropyPolicy, {}, [50, 100])
    # Chosen on the first half, leaving at exit 1 is perfect (100% accuracy at 50% time) and
    # scores 0 on the second; chosen on the second, exit 1 is all wrong, so within 100% it
    # never leaves early (100 at 100% time on the first), within 50% it must (100 at 50%).
    assert within["50"] == {"accuracy": pytest.approx(0.5), "time_percent": pytest.approx(50.0)}
    assert within["100"] == {"accuracy": pytest.approx(0.5), "time_percent": pytest.approx(75.0)}
    # in-sample, the whole set's best within 100% is the final exit: 100% accuracy


def test_a_policy_without_a_dense_sweep_gives_none():
    class Nope(ExitPolicy):  # a plugin's rule that defines no dense score
        name = "nope"

        def decide(self, layer, outputs, state):
            return torch.zeros(0, dtype=torch.bool)

    logits = torch.randn(2, 6, 2)
    assert held_out_best_within(logits, torch.zeros(6, dtype=torch.long), get_task("sst2"),
                                Nope, {}, [50]) is None


def test_the_training_setting_is_chosen_on_one_half_and_scored_on_the_other():
    """`lucky` is right exactly on the first half's examples, `steady` on 3 of every 4 of
    both: chosen on the first half, `lucky` wins and scores 0 on the second; chosen on the
    second, `steady` wins and scores 0.75 on the first."""
    from gradsurg.multiexit.evaluation.held_out import held_out_best_over_settings

    examples = 16
    first, second = split_halves(examples)
    labels = torch.zeros(examples, dtype=torch.long)

    def logits_right_on(right: torch.Tensor) -> torch.Tensor:
        answer = torch.where(right, 0, 1)
        one = torch.nn.functional.one_hot(answer, 2).float() * 8  # confident: nobody waits
        return torch.stack([one, one])  # two identical exits

    lucky = torch.zeros(examples, dtype=torch.bool)
    lucky[first] = True
    steady = torch.ones(examples, dtype=torch.bool)
    steady[first[::4]] = False
    steady[second[::4]] = False
    candidates = {"lucky": logits_right_on(lucky), "steady": logits_right_on(steady)}
    found = held_out_best_over_settings(candidates, labels, get_task("sst2"), EntropyPolicy, {},
                                        [100])
    best = found["100"]
    assert best["chosen"] == ["lucky", "steady"]
    expected_steady = float(steady[first].float().mean())
    assert best["accuracy"] == pytest.approx((0.0 + expected_steady) / 2)
    one = held_out_best_over_settings({"only": candidates["steady"]}, labels, get_task("sst2"),
                                      EntropyPolicy, {}, [100])
    plain = held_out_best_within(candidates["steady"], labels, get_task("sst2"), EntropyPolicy,
                                 {}, [100])
    assert {k: v for k, v in one["100"].items() if k != "chosen"} == plain["100"]
    with pytest.raises(ValueError, match="different numbers of examples"):
        held_out_best_over_settings({"a": candidates["lucky"], "b": candidates["lucky"][:, :8]},
                                    labels, get_task("sst2"), EntropyPolicy, {}, [100])
