"""Exit policies against independent per-example reference loops, plus their errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradsurg.data.glue import get_task
from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.sweeps import policy_sweep
from gradsurg.multiexit.exit_loop import simulate_exits
from gradsurg.multiexit.policies import (
    POLICIES,
    ConfidenceWindowPolicy,
    ExitPolicy,
    FixedPolicy,
    MaxProbPolicy,
    NormalizedEntropyPolicy,
    PatiencePolicy,
)

# Small integer logits make ties, agreements and exact probability values common.
CLASS_LOGITS = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(2, 4)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.integers(-4, 4).map(float)))


def softmax(row: np.ndarray) -> np.ndarray:
    e = np.exp(row - row.max())
    return e / e.sum()


def entropy(row: np.ndarray) -> float:
    p = softmax(row)
    return float(-sum(x * math.log(x) for x in p if x > 0))


def reference_exits(all_logits: np.ndarray, leaves) -> list[int]:
    """Per example, walk the exits in order; ``leaves(history)`` sees outputs 0..i."""
    num_layers, num_rows, _ = all_logits.shape
    exits = []
    for n in range(num_rows):
        exit_layer = num_layers - 1
        for i in range(num_layers - 1):
            if leaves([all_logits[j, n] for j in range(i + 1)]):
                exit_layer = i
                break
        exits.append(exit_layer)
    return exits


def exits_of(policy: ExitPolicy, all_logits: np.ndarray) -> list[int]:
    return simulate_exits(policy, torch.from_numpy(all_logits)).exit_layers.tolist()


@settings(max_examples=60, deadline=None)
@given(all_logits=CLASS_LOGITS, threshold=st.floats(0, 1))
def test_normalized_entropy_matches_reference(all_logits, threshold) -> None:
    classes = all_logits.shape[-1]
    expected = reference_exits(
        all_logits, lambda h: entropy(h[-1]) / math.log(classes) < threshold)
    assert exits_of(NormalizedEntropyPolicy(threshold), all_logits) == expected


@settings(max_examples=60, deadline=None)
@given(all_logits=CLASS_LOGITS, threshold=st.floats(0, 1))
def test_max_prob_matches_reference(all_logits, threshold) -> None:
    expected = reference_exits(all_logits, lambda h: softmax(h[-1]).max() > threshold)
    assert exits_of(MaxProbPolicy(threshold), all_logits) == expected


@settings(max_examples=80, deadline=None)
@given(all_logits=CLASS_LOGITS, patience=st.integers(1, 4))
def test_patience_matches_pabee_counter(all_logits, patience) -> None:
    def leaves(history):
        # PABEE's counter, replayed from scratch over the history.
        counter = 0
        for previous, current in pairwise(history):
            same = int(np.argmax(previous)) == int(np.argmax(current))
            counter = counter + 1 if same else 0
        return counter >= patience

    assert exits_of(PatiencePolicy(patience=patience), all_logits) == reference_exits(
        all_logits, leaves)


@settings(max_examples=60, deadline=None)
@given(
    all_logits=st.tuples(st.integers(1, 6), st.integers(1, 5)).flatmap(
        lambda shape: arrays(np.float64, (*shape, 1), elements=st.integers(0, 8).map(
            lambda k: k * 0.05))),
    patience=st.integers(1, 3),
    tolerance=st.sampled_from([0.01, 0.06, 0.11]),
)
def test_patience_for_regression_uses_the_tolerance(all_logits, patience, tolerance) -> None:
    def leaves(history):
        counter = 0
        for previous, current in pairwise(history):
            counter = counter + 1 if abs(current[0] - previous[0]) < tolerance else 0
        return counter >= patience

    policy = PatiencePolicy(patience=patience, tolerance=tolerance)
    assert exits_of(policy, all_logits) == reference_exits(all_logits, leaves)


def test_patience_on_a_hand_made_example() -> None:
    # predictions per exit: row 0: 1 1 1 0 ; row 1: 0 1 1 1 ; row 2: 1 0 1 0
    preds = torch.tensor([[1, 0, 1], [1, 1, 0], [1, 1, 1], [0, 1, 0]])
    all_logits = torch.nn.functional.one_hot(preds, 2).double() * 3
    assert simulate_exits(PatiencePolicy(patience=1), all_logits).exit_layers.tolist() == [1, 2, 3]
    assert simulate_exits(PatiencePolicy(patience=2), all_logits).exit_layers.tolist() == [2, 3, 3]


@settings(max_examples=60, deadline=None)
@given(all_logits=st.tuples(st.integers(1, 6), st.integers(1, 5)).flatmap(
           lambda shape: arrays(np.float64, (*shape, 2), elements=st.integers(-4, 4).map(float))),
       threshold=st.floats(0, 0.5), window=st.integers(1, 3), margin=st.floats(0, 0.45))
def test_confidence_window_matches_elbert_binary_rule(all_logits, threshold, window,
                                                      margin) -> None:
    """ELBERT's own formulation for two classes: x = P(class 1) of each exit so far; leave if
    the normalized entropy is low, or the last N values are all > 0.5 + m or all < 0.5 - m."""
    def leaves(history):
        if entropy(history[-1]) / math.log(2) < threshold:
            return True
        x = [softmax(h)[1] for h in history]
        if len(x) < window:
            return False
        last = x[-window:]
        return all(v > 0.5 + margin for v in last) or all(v < 0.5 - margin for v in last)

    policy = ConfidenceWindowPolicy(threshold=threshold, window=window, margin=margin)
    got = exits_of(policy, all_logits)
    expected = reference_exits(all_logits, leaves)
    # Exact ties of p against 0.5 +- m are decided by rounding; integer logits avoid most.
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(all_logits=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(3, 5)).flatmap(
           lambda shape: arrays(np.float64, shape, elements=st.integers(-4, 4).map(float))),
       window=st.integers(1, 3), margin=st.sampled_from([0.0, 0.05, 0.2]))
def test_confidence_window_generalizes_to_many_classes(all_logits, window, margin) -> None:
    def leaves(history):
        if len(history) < window:
            return False
        picks = []
        for h in history[-window:]:
            p = np.sort(softmax(h))[::-1]
            if p[0] - p[1] <= 2 * margin:
                return False
            picks.append(int(np.argmax(h)))
        return len(set(picks)) == 1

    policy = ConfidenceWindowPolicy(threshold=0.0, window=window, margin=margin)
    assert exits_of(policy, all_logits) == reference_exits(all_logits, leaves)


def test_fixed_policy_exits_at_its_layer_and_skips_other_heads() -> None:
    all_logits = torch.randn(4, 6, 3)
    for layer in range(1, 5):
        policy = FixedPolicy(layer=layer)
        out = simulate_exits(policy, all_logits)
        assert out.exit_layers.tolist() == [layer - 1] * 6
        torch.testing.assert_close(out.logits, all_logits[layer - 1])
        assert [policy.needs_outputs(i) for i in range(4)] == [i == layer - 1 for i in range(4)]
    with pytest.raises(ConfigError, match=r"layer=5 is out of range; allowed: 1\.\.4"):
        simulate_exits(FixedPolicy(layer=5), all_logits)


def test_fixed_policy_works_for_regression() -> None:
    all_logits = torch.randn(3, 5, 1)
    assert simulate_exits(FixedPolicy(layer=2), all_logits).exit_layers.tolist() == [1] * 5


@pytest.mark.parametrize("name", ["entropy", "normalized_entropy", "max_prob",
                                  "confidence_window"])
def test_classification_policies_refuse_regression_outputs(name) -> None:
    with pytest.raises(ConfigError, match=f"{name}' needs a classification model"):
        simulate_exits(POLICIES.build(name, where="test"), torch.zeros(3, 4, 1))


@pytest.mark.parametrize(("name", "params", "message"), [
    ("entropy", {"threshold": -0.1}, "threshold=-0.1 is out of range"),
    ("entropy", {"threshold": "high"}, "threshold='high' is invalid"),
    ("normalized_entropy", {"threshold": 1.5}, r"allowed: a number in \[0, 1.0\]"),
    ("max_prob", {"threshold": math.nan}, "threshold=nan is out of range"),
    ("patience", {"patience": 0}, "patience=0 is out of range"),
    ("patience", {"patience": 1.5}, "patience=1.5 is invalid"),
    ("confidence_window", {"margin": 0.6}, "margin=0.6 is out of range"),
    ("confidence_window", {"window": True}, "window=True is invalid"),
    ("fixed", {"layer": 0}, "layer=0 is out of range"),
    ("entropy", {"patience": 2}, r"exit policy 'entropy'\): got an unexpected keyword argument "
                                 "'patience'; options are threshold"),
    ("nope", {}, "unknown exit policy 'nope'; allowed: confidence_window, entropy, fixed"),
])
def test_bad_policy_specs_are_one_line_config_errors(name, params, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        POLICIES.build({"name": name, **params}, where="exit_policy")
    assert "\n" not in str(info.value)


def test_split_policy_spec() -> None:
    assert POLICIES.split("entropy", where="exit_policy") == ("entropy", {})
    assert POLICIES.split({"name": "patience", "patience": 2}, where="exit_policy") == (
        "patience", {"patience": 2})
    with pytest.raises(ConfigError, match=r"exit_policy: expected an? exit policy name"):
        POLICIES.split({"patience": 2}, where="exit_policy")


def test_a_registered_plugin_policy_is_usable_by_name() -> None:
    @dataclass
    class EveryOther(ExitPolicy):
        """Leaves at odd exits (a toy plugin)."""

        name: ClassVar[str] = "test_every_other"
        classification_only: ClassVar[bool] = False

        def decide(self, layer, outputs, state):
            return torch.full((outputs.shape[0],), layer % 2 == 1)

    POLICIES.add("test_every_other", EveryOther)
    try:
        all_logits = torch.randn(4, 3, 2)
        labels = torch.tensor([0, 1, 0])
        rule = POLICIES.build("test_every_other", where="exit_policy")
        points = policy_sweep(all_logits, labels, get_task("sst2"), rule, values=[0.0])
        assert points[0].exit_counts == [0, 3, 0, 0]
        assert points[0].time_percent == pytest.approx(50.0)
    finally:
        POLICIES._items.pop("test_every_other")


def test_patience_sweep_trades_time_for_depth() -> None:
    gen = torch.Generator().manual_seed(0)
    all_logits = torch.randn(6, 50, 2, generator=gen)
    labels = torch.randint(0, 2, (50,), generator=gen)
    points = policy_sweep(all_logits, labels, get_task("sst2"), PatiencePolicy())
    assert [p.value for p in points] == [5, 4, 3, 2, 1]
    times = [p.time_percent for p in points]
    assert times == sorted(times, reverse=True)  # less patience never takes longer
    assert points[0].time_percent == 100.0  # patience 5 on 6 exits: never early


def test_with_param_copies_validates_and_types_the_swept_value() -> None:
    rule = POLICIES.build({"name": "patience", "tolerance": 0.2}, where="exit_policy")
    other = rule.with_param("patience", 2.0)
    assert other == PatiencePolicy(patience=2, tolerance=0.2)
    assert isinstance(other.patience, int)  # YAML and threshold arrays give floats
    assert rule.patience == 3  # the original is unchanged
    with pytest.raises(ConfigError, match="patience=0 is out of range"):
        rule.with_param("patience", 0.0)
    assert MaxProbPolicy().with_param("threshold", 1.0).threshold == 1.0


def test_a_sweep_builds_its_policy_once(monkeypatch) -> None:
    lookups = []
    real_get = POLICIES.get
    monkeypatch.setattr(POLICIES, "get", lambda name: lookups.append(name) or real_get(name))
    all_logits = torch.randn(4, 6, 2, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    rule = POLICIES.build({"name": "confidence_window", "window": 3}, where="exit_policy")
    points = policy_sweep(all_logits, labels, get_task("sst2"), rule,
                          values=[0.0, 0.1, 0.5, 1.0])
    assert lookups == ["confidence_window"]  # the build; no lookup per swept value
    assert [p.value for p in points] == [0.0, 0.1, 0.5, 1.0]
    built = ConfidenceWindowPolicy(window=3)
    assert [p.exit_counts for p in points] == [
        p.exit_counts for p in policy_sweep(all_logits, labels, get_task("sst2"), built,
                                            values=[0.0, 0.1, 0.5, 1.0])]
