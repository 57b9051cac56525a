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


def test_the_documented_map_is_the_stored_run():
    """docs/conflict_map.md's table, recomputed from bench/results/conflict_map.json."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stored = json.loads((root / "bench" / "results" / "conflict_map.json").read_text())
    text = (root / "docs" / "conflict_map.md").read_text()
    assert stored["commit"].startswith(re.search(r"\(commit ([0-9a-f]+),", text).group(1))
    rows = [line.strip("|").split("|") for line in text.splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(stored["blocks"])

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.2f}" if values else "-"

    for row, block in zip(rows, stored["blocks"]):
        cells = [cell.strip() for cell in row]
        pairs = [p for p in stored["pairs"] if stored["conflict_share"][block][p] is not None]
        final = [p for p in pairs if "exit6" in p.split("/")]
        early = [p for p in pairs if "exit6" not in p.split("/")]
        expected = [str(int(block.rsplit(".", 1)[1]) + 1)]
        for group in (final, early):
            expected += [str(len(group)),
                         mean([stored["conflict_share"][block][p] for p in group]),
                         mean([stored["mean_cosine"][block][p] for p in group])]
        assert cells == expected, (block, cells, expected)
