"""Dense trade-off sweeps: thresholds from the model's outputs reach every operating point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradsurg.data.glue import get_task
from gradsurg.multiexit.evaluation.dense_sweeps import (
    change_thresholds,
    dense_sweep,
    dense_values,
    thin,
)
from gradsurg.multiexit.exit_loop import simulate_exits
from gradsurg.multiexit.policies import (
    POLICIES,
    EntropyPolicy,
    ExitPolicy,
    FixedPolicy,
    PatiencePolicy,
)


def exits_of(policy: str, params: dict, all_logits: torch.Tensor) -> tuple[int, ...]:
    rule = POLICIES.build({"name": policy, **params}, where="test")
    return tuple(simulate_exits(rule, all_logits).exit_layers.tolist())


def numpy_scores(logits: np.ndarray, policy: str) -> np.ndarray:
    """Independent float64 rendering of each policy's per-exit score."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    if policy == "entropy":
        return entropy
    if policy == "max_prob":
        return p.max(axis=-1)
    return entropy / np.log(logits.shape[-1])


def test_change_thresholds_by_hand():
    # Example 0 scores 0.5 then 0.3 (running minima 0.5, 0.3); example 1: 0.2 then 0.4
    # (minima 0.2, 0.2). Records: 0.2, 0.3, 0.5, then one just past 0.5.
    scores = torch.tensor([[0.5, 0.2], [0.3, 0.4]])
    got = change_thresholds(scores, leaves_below=True)
    f32 = np.float32
    assert got[:3] == [float(f32(0.2)), float(f32(0.3)), float(f32(0.5))]
    assert got[3] == float(np.nextafter(f32(0.5), f32(np.inf)))
    # Leaving above: running maxima 0.5, 0.5 and 0.2, 0.4 -> 0.5, 0.4, 0.2, then below 0.2.
    above = change_thresholds(scores, leaves_below=False)
    assert above[:3] == [float(f32(0.5)), float(f32(0.4)), float(f32(0.2))]
    assert above[3] == float(np.nextafter(f32(0.2), f32(-np.inf)))
    # An upper bound that cannot be passed stops at the last record.
    assert change_thresholds(torch.tensor([[1.0]]), leaves_below=True, upper=1.0) == [1.0]
    # NaN scores (NaN outputs) never leave; nothing finite: only "never leave early".
    assert change_thresholds(torch.tensor([[float("nan")]]), leaves_below=True) == [0.0]
    # ... and do not hide an example's later scores.
    nan_first = torch.tensor([[float("nan")], [0.5]])
    assert change_thresholds(nan_first, leaves_below=True)[0] == 0.5
    assert change_thresholds(nan_first, leaves_below=False)[0] == 0.5


@st.composite
def exit_logits(draw, classes=(2, 4)):
    layers = draw(st.integers(2, 5))
    rows = draw(st.integers(1, 7))
    width = draw(st.integers(*classes))
    values = draw(arrays(np.float32, (layers, rows, width),
                         elements=st.sampled_from([-4.0, -1.0, 0.0, 0.5, 1.0, 3.0, 8.0])))
    return values


@pytest.mark.parametrize("policy", ["entropy", "normalized_entropy", "max_prob"])
@settings(max_examples=40, deadline=None)
@given(logits=exit_logits())
def test_dense_thresholds_reach_every_exit_vector_once(policy, logits):
    """Every exit vector a threshold can give (thresholds at, between and beyond the exits'
    scores, scored independently in float64) is one of the dense sweep's, and each dense
    threshold gives a different one (no wasted points)."""
    all_logits = torch.from_numpy(logits)
    family = POLICIES.get(policy).dense_family({}, regression=False)
    assert family is not None and family.parameter == "threshold"
    values = dense_values(all_logits, family, max_points=10_000)
    dense = [exits_of(policy, {"threshold": v}, all_logits) for v in values]
    assert len(set(dense)) == len(dense)
    scores = np.unique(numpy_scores(logits[:-1].astype(np.float64), policy))
    upper = np.inf if policy == "entropy" else 1.0
    grid = {0.0, *scores, *((scores[1:] + scores[:-1]) / 2), float(min(scores[-1] + 1, upper))}
    grid |= {float(np.nextafter(np.float32(s), np.float32(d))) for s in scores
             for d in (-np.inf, np.inf)}
    reachable = {exits_of(policy, {"threshold": t}, all_logits)
                 for t in grid if 0 <= t <= upper}
    assert reachable <= set(dense)


@settings(max_examples=40, deadline=None)
@given(logits=exit_logits(classes=(1, 1)), patience=st.integers(1, 3))
def test_regression_tolerances_reach_every_exit_vector(logits, patience):
    all_logits = torch.from_numpy(logits)
    labels = torch.linspace(0, 5, logits.shape[1])
    sweep = dense_sweep(all_logits, labels, get_task("stsb"), PatiencePolicy,
                        {"patience": patience}, max_points=10_000)
    assert (sweep.policy, sweep.parameter, sweep.params) == (
        "patience", "tolerance", {"patience": patience})
    dense = {exits_of("patience", {"patience": patience, "tolerance": p.value}, all_logits)
             for p in sweep.points}
    outputs = logits[..., 0].astype(np.float64)
    changes = np.unique(np.abs(np.diff(outputs, axis=0)))
    grid = {0.0, *changes, *((changes[1:] + changes[:-1]) / 2), float(changes[-1] + 1)}
    reachable = {exits_of("patience", {"patience": patience, "tolerance": t}, all_logits)
                 for t in grid}
    assert reachable <= dense


def test_sweep_spans_full_depth_to_first_exit_in_order():
    generator = torch.Generator().manual_seed(0)
    all_logits = torch.randn(4, 50, 2, generator=generator) * 3
    labels = torch.randint(0, 2, (50,), generator=generator)
    sweep = dense_sweep(all_logits, labels, get_task("sst2"), EntropyPolicy, max_points=20)
    times = [p.time_percent for p in sweep.points]
    assert len(times) == 20
    assert times[0] == 100.0 and times[-1] == 25.0  # never early ... all at exit 1
    assert times == sorted(times, reverse=True)  # thresholds grow, so time falls
    assert sweep.points[0].metric == {
        "accuracy": float((all_logits[-1].argmax(-1) == labels).float().mean())}


def test_integer_policies_sweep_every_value():
    all_logits = torch.randn(4, 10, 2)
    labels = torch.zeros(10, dtype=torch.long)
    fixed = dense_sweep(all_logits, labels, get_task("sst2"), FixedPolicy)
    assert [p.value for p in fixed.points] == [4.0, 3.0, 2.0, 1.0]
    assert [p.time_percent for p in fixed.points] == [100.0, 75.0, 50.0, 25.0]
    patience = dense_sweep(all_logits, labels, get_task("sst2"), PatiencePolicy,
                           {"tolerance": 0.5})
    assert [p.value for p in patience.points] == [3.0, 2.0, 1.0]
    assert patience.params == {"tolerance": 0.5}


def family_of(policy: str, params: dict, *, regression: bool) -> tuple | None:
    """(rule name, fixed parameters, swept parameter) of the policy's own dense family."""
    family = POLICIES.get(policy).dense_family(params, regression=regression)
    return None if family is None else (family.rule.name, family.params, family.parameter)


def test_dense_policy_choices():
    assert family_of("entropy", {"threshold": 0.3}, regression=False) == (
        "entropy", {}, "threshold")
    assert family_of("confidence_window", {"window": 3}, regression=False) == (
        "confidence_window", {"window": 3}, "threshold")
    # Regression: entropy is undefined, so PABEE's rule with its tolerance swept.
    assert family_of("entropy", {}, regression=True) == (
        "patience", {"patience": 1}, "tolerance")
    assert family_of("patience", {"patience": 2}, regression=True) == (
        "patience", {"patience": 2}, "tolerance")
    assert family_of("fixed", {"layer": 2}, regression=True) == ("fixed", {}, "layer")

    class SomeoneElsesRule(ExitPolicy):  # a plugin's rule that defines no dense score
        name = "someone_elses_rule"

        def decide(self, layer, outputs, state):
            return torch.zeros(0, dtype=torch.bool)

    assert SomeoneElsesRule.dense_family({}, regression=False) is None
    all_logits = torch.randn(3, 4, 2)
    assert dense_sweep(all_logits, torch.zeros(4, dtype=torch.long), get_task("sst2"),
                       SomeoneElsesRule) is None



@settings(max_examples=50, deadline=None)
@given(count=st.integers(1, 600), max_points=st.integers(2, 300))
def test_thin_keeps_ends_order_and_limit(count, max_points):
    values = [float(v) for v in range(count)]
    kept = thin(values, max_points)
    assert len(kept) == min(count, max_points)
    assert kept[0] == values[0] and kept[-1] == values[-1]
    assert kept == sorted(set(kept))  # a subsequence, no repeats
    gaps = np.diff(kept) if len(kept) > 1 else np.array([1.0])
    assert gaps.max() <= np.ceil((count - 1) / max(len(kept) - 1, 1)) + 1  # evenly spread


def test_a_plugin_policy_with_a_dense_score_gets_a_dense_sweep():
    """A policy owns its dense sweep: a rule no module here knows by name, with a score and the
    side it leaves on, sweeps densely like the built-ins (here: max_prob's score again, so its
    points must be max_prob's)."""
    from dataclasses import dataclass
    from typing import ClassVar

    from gradsurg.multiexit.policies import MaxProbPolicy, max_probability

    @dataclass
    class Confident(ExitPolicy):
        name: ClassVar[str] = "test_confident"
        sweep_parameter: ClassVar[str] = "level"
        dense_score = staticmethod(max_probability)
        leaves_below: ClassVar[bool] = False
        threshold_upper: ClassVar[float] = 1.0
        level: float = 0.9

        def decide(self, layer, outputs, state):
            return max_probability(outputs) > self.level

    generator = torch.Generator().manual_seed(1)
    all_logits = torch.randn(4, 30, 2, generator=generator) * 3
    labels = torch.randint(0, 2, (30,), generator=generator)
    mine = dense_sweep(all_logits, labels, get_task("sst2"), Confident)
    theirs = dense_sweep(all_logits, labels, get_task("sst2"), MaxProbPolicy)
    assert mine is not None and theirs is not None
    assert (mine.policy, mine.parameter) == ("test_confident", "level")
    assert [(p.value, p.time_percent, p.metric) for p in mine.points] == [
        (p.value, p.time_percent, p.metric) for p in theirs.points]


def test_a_run_names_a_policy_without_a_dense_sweep(tmp_path, capsys):
    """No silent skip: the evaluation says the policy has no dense sweep."""
    from gradsurg.programs.multiexit_glue.checks import ExitPolicySetting
    from gradsurg.programs.multiexit_glue.evaluation import tradeoff_results

    class NoDense(ExitPolicy):
        name = "test_no_dense"

        def decide(self, layer, outputs, state):
            return torch.zeros(outputs.shape[0], dtype=torch.bool)

    all_logits = torch.randn(3, 6, 2)
    labels = torch.zeros(6, dtype=torch.long)
    got = tradeoff_results(all_logits, labels, get_task("sst2"), mode="romebert", split="dev",
                           policy=ExitPolicySetting(NoDense(), {}, None),
                           per_exit=[{"accuracy": 0.5}] * 3, plots=tmp_path)
    assert got == {}
    assert "'test_no_dense' defines no dense sweep" in " ".join(capsys.readouterr().out.split())
