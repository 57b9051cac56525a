"""bench/conflict_map.py: the map it draws is the mean of what the run logged, per layer and
pair of exits; a pair a layer never saw stays empty; a log without per-block cosines is one
error line."""

from __future__ import annotations

import pytest
from bench_modules import load_bench


@pytest.fixture(scope="module")
def conflict_map():
    return load_bench("conflict_map").conflict_map


def test_the_map_averages_the_logged_lines_per_layer_and_pair(conflict_map):
    lines = [
        {"step": 10, "loss/exit1": 0.7, "cosine/encoder.layers.0/exit1/exit2": 0.5,
         "conflict/encoder.layers.0/exit1/exit2": 0.0,
         "cosine/encoder.layers.0/exit1/exit10": -0.2,
         "conflict/encoder.layers.0/exit1/exit10": 1.0,
         "cosine/encoder.layers.1/exit2/exit10": -0.4,
         "conflict/encoder.layers.1/exit2/exit10": 0.6},
        {"step": 20, "cosine/encoder.layers.0/exit1/exit2": -0.1,
         "conflict/encoder.layers.0/exit1/exit2": 0.5,
         "cosine/encoder.layers.0/exit1/exit10": 0.0,
         "conflict/encoder.layers.0/exit1/exit10": 0.0},
    ]
    result = conflict_map(lines)
    assert result["blocks"] == ["encoder.layers.0", "encoder.layers.1"]
    assert result["pairs"] == ["exit1/exit2", "exit1/exit10", "exit2/exit10"]  # by exit number
    cosine, share = result["mean_cosine"], result["conflict_share"]
    assert cosine["encoder.layers.0"]["exit1/exit2"] == pytest.approx(0.2)
    assert share["encoder.layers.0"]["exit1/exit2"] == pytest.approx(0.25)
    assert cosine["encoder.layers.0"]["exit1/exit10"] == pytest.approx(-0.1)
    assert share["encoder.layers.0"]["exit1/exit10"] == pytest.approx(0.5)
    assert cosine["encoder.layers.1"]["exit2/exit10"] == pytest.approx(-0.4)
    assert cosine["encoder.layers.1"]["exit1/exit2"] is None  # exit 1 never reaches layer 1
    assert result["log_lines"] == 2


def test_a_log_without_per_block_cosines_is_one_error_line(conflict_map):
    with pytest.raises(SystemExit, match=r"^error: the run's log holds no per-block cosines"):
        conflict_map([{"step": 1, "loss/final": 0.5, "cosine/final/sd": 0.1}])
