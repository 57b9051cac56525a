"""Summary numbers of a metric-vs-time curve: a hand-computed case and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradsurg.multiexit.evaluation.tradeoff_summary import (
    best_within,
    fixed_exit_points,
    front,
    least_time_within,
    normalized_auc,
    summarize,
)

EXITS = [0.60, 0.70, 0.80, 0.82]  # L = 4: fixed points at 25, 50, 75, 100 %
SWEEP = [(30.0, 0.75), (40.0, 0.65), (60.0, 0.81)]


def test_hand_computed_summary():
    # Front: (25, .60), (30, .75), (60, .81), (100, .82); (40, .65), (50, .70), (75, .80)
    # are beaten by faster points.
    assert front([*SWEEP, *fixed_exit_points(EXITS)]) == [
        (25.0, 0.60), (30.0, 0.75), (60.0, 0.81), (100.0, 0.82)]
    # Area over [25, 100]: .60 * 5 + .75 * 30 + .81 * 40 + .82 * 0 = 57.9, / 75 = 0.772.
    summary = summarize(SWEEP, EXITS, "accuracy")
    assert summary.start == 25.0
    assert summary.auc == pytest.approx(57.9 / 75)
    assert summary.best_within == {
        "25": {"accuracy": 0.60, "time_percent": 25.0},
        "30": {"accuracy": 0.75, "time_percent": 30.0},
        "40": {"accuracy": 0.75, "time_percent": 30.0},
        "50": {"accuracy": 0.75, "time_percent": 30.0},
        "60": {"accuracy": 0.81, "time_percent": 60.0},
    }
    assert summary.final == summary.reference == 0.82
    assert summary.least_time_within == 60.0  # 0.81 >= 0.82 - 0.01
    other = summarize(SWEEP, EXITS, "accuracy", reference=0.85)
    assert other.least_time_within is None  # nothing within a point of 0.85
    assert summarize(SWEEP, EXITS, "accuracy", reference=0.76).least_time_within == 30.0


def test_budget_below_the_first_exit_and_a_single_exit():
    summary = summarize([], [0.5, 0.6, 0.7], "accuracy")  # exits at 33.3, 66.7, 100 %
    assert summary.best_within["25"] is None and summary.best_within["30"] is None
    assert summary.best_within["40"] == {"accuracy": 0.5, "time_percent": pytest.approx(100 / 3)}
    # Steps .5 over [33.3, 66.7], .6 over [66.7, 100]: mean .55.
    assert summary.auc == pytest.approx(0.55)
    single = summarize([], [0.9], "accuracy")
    assert single.auc == 0.9 and single.least_time_within == 100.0


def test_regression_metric_can_be_negative():
    summary = summarize([(50.0, -0.2)], [-0.5, 0.3], "pearson")
    # Front (50, -0.2), (100, 0.3) over [50, 100]: -0.2 * 50 / 50.
    assert summary.auc == pytest.approx(-0.2)


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="time in"):
        front([(0.0, 0.5)])
    with pytest.raises(ValueError, match="NaN"):
        front([(50.0, float("nan"))])
    with pytest.raises(ValueError, match="starts at"):
        normalized_auc([(50.0, 0.5)], start=25.0)


def numpy_auc(points, start):
    """Independent reference: the mean of F on a fine midpoint grid over [start, 100]."""
    grid = np.linspace(start, 100.0, 200_001)
    mid = (grid[1:] + grid[:-1]) / 2
    times = np.array([t for t, _ in points])
    metrics = np.array([m for _, m in points])
    best = np.array([metrics[times <= x].max() for x in mid[::200]])
    return best.mean()


curves = st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8),
    st.lists(st.tuples(st.floats(1.0, 100.0), st.floats(0.0, 1.0)), max_size=15),
)


@settings(max_examples=60, deadline=None)
@given(curve=curves)
def test_summary_properties(curve):
    exits, sweep = curve
    start = 100.0 / len(exits)
    sweep = [(t, m) for t, m in sweep if t >= start]  # a real sweep never beats 1 layer
    points = [*sweep, *fixed_exit_points(exits)]
    steps = front(points)
    times, metrics = [t for t, _ in steps], [m for _, m in steps]
    assert times == sorted(times) and metrics == sorted(metrics)  # monotone front
    assert len(set(times)) == len(times) and len(set(metrics)) == len(metrics)
    assert all(best_within(points, t)[1] == m for t, m in steps)  # every front point is best
    summary = summarize(sweep, exits, "m")
    all_metrics = [m for _, m in points]
    assert min(all_metrics) - 1e-12 <= summary.auc <= max(all_metrics) + 1e-12
    assert metrics[0] - 1e-12 <= summary.auc <= metrics[-1] + 1e-12
    if len(exits) > 1:
        assert summary.auc == pytest.approx(numpy_auc(points, start), abs=2e-3)
    reached = [b[summary.metric] for b in summary.best_within.values() if b is not None]
    assert reached == sorted(reached)  # a bigger budget never does worse
    assert all(b["time_percent"] <= float(k) + 1e-9
               for k, b in summary.best_within.items() if b is not None)
    # Its own final exit is always within a point of itself, at 100 % at the latest.
    assert summary.least_time_within is not None and summary.least_time_within <= 100.0
    assert least_time_within(points, max(all_metrics) + 0.02) is None
