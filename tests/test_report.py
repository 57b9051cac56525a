"""Report plots write 800x500 PNGs; tables render the expected numbers as text."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from rich.console import Console
from rich.table import Table

from gradsurg.multiexit.evaluation.sweeps import ExitSweepPoint
from gradsurg.report import (
    exit_metrics_table,
    plot_exit_distribution,
    plot_exit_metrics,
    plot_tradeoff,
    sweep_table,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must directly follow the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _render(table: Table) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    return console.export_text()


def test_plot_exit_metrics_writes_png(tmp_path: Path) -> None:
    curves = {"two-stage": [0.80, 0.85, 0.9, 0.91], "joint + PCGrad": [0.82, 0.86, 0.89, 0.92]}
    path = plot_exit_metrics(curves, "accuracy", tmp_path / "nested" / "exits.png")
    assert path == tmp_path / "nested" / "exits.png"
    assert path.stat().st_size > 0
    assert _png_size(path) == (800, 500)


def test_plot_tradeoff_writes_png(tmp_path: Path) -> None:
    curves = {"joint": [(100.0, 0.91), (62.5, 0.9), (40.0, 0.85), (25.0, 0.8)],
              "joint + PCGrad": [(25.0, 0.82), (100.0, 0.92)]}
    path = plot_tradeoff(curves, "f1", str(tmp_path / "tradeoff.png"), title="MRPC")
    assert isinstance(path, Path)
    assert path.stat().st_size > 0
    assert _png_size(path) == (800, 500)


def test_plot_exit_distribution_writes_png(tmp_path: Path) -> None:
    path = plot_exit_distribution([5, 0, 12, 3, 0, 80], tmp_path / "dist.png", title="t=0.3")
    assert path.stat().st_size > 0
    assert _png_size(path) == (800, 500)
    all_zero = plot_exit_distribution([0, 0], tmp_path / "zero.png")
    assert _png_size(all_zero) == (800, 500)


def test_plots_reject_empty_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one curve"):
        plot_exit_metrics({}, "accuracy", tmp_path / "a.png")
    with pytest.raises(ValueError, match="without points"):
        plot_tradeoff({"a": []}, "accuracy", tmp_path / "b.png")
    with pytest.raises(ValueError, match="at least one exit"):
        plot_exit_distribution([], tmp_path / "c.png")
    with pytest.raises(ValueError, match=">= 0"):
        plot_exit_distribution([3, -1], tmp_path / "d.png")
    assert not list(tmp_path.iterdir())


def test_exit_metrics_table_shows_glue_style_percentages() -> None:
    per_exit = [{"f1": 0.8, "accuracy": 0.71234},
                {"f1": 0.91234, "accuracy": 0.875},
                {"f1": 1.0}]
    table = exit_metrics_table(per_exit, "MRPC exits")
    assert isinstance(table, Table)
    assert [column.header for column in table.columns] == ["exit", "f1", "accuracy"]
    assert table.row_count == 3
    text = _render(table)
    assert "MRPC exits" in text
    lines = [line for line in text.splitlines() if "│" in line and "exit" not in line]
    assert [line.split("│")[1:4] for line in lines] == [
        ["    1 ", "  80.00 ", "    71.23 "],
        ["    2 ", "  91.23 ", "    87.50 "],
        ["    3 ", " 100.00 ", "        - "],
    ]


def test_exit_metrics_table_scales_signed_metrics() -> None:
    text = _render(exit_metrics_table([{"pearson": -0.5, "spearman": 0.123456}], "STS-B"))
    assert "-50.00" in text and "12.35" in text


def test_sweep_table_lists_thresholds_metrics_time_and_exits() -> None:
    points = [
        ExitSweepPoint(value=0.0, metric={"f1": 0.9, "accuracy": 0.85},
                       time_percent=100.0, exit_counts=[0, 0, 8]),
        ExitSweepPoint(value=0.005, metric={"f1": 0.875, "accuracy": 0.8},
                       time_percent=200 / 3, exit_counts=[3, 2, 3]),
    ]
    table = sweep_table(points, "accuracy", "MRPC entropy sweep")
    assert isinstance(table, Table)
    headers = [column.header for column in table.columns]
    assert headers == ["threshold", "accuracy", "f1", "time %", "exits (layer 1..L)"]
    text = _render(table)
    assert "MRPC entropy sweep" in text
    rows = [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in text.splitlines() if "│" in line and "threshold" not in line]
    assert rows == [["0", "85.00", "90.00", "100.00", "0 0 8"],
                    ["0.005", "80.00", "87.50", "66.67", "3 2 3"]]


def test_sweep_table_needs_the_primary_metric() -> None:
    point = ExitSweepPoint(value=0.1, metric={"accuracy": 0.5}, time_percent=50.0,
                           exit_counts=[1, 1])
    with pytest.raises(ValueError, match="'f1'"):
        sweep_table([point], "f1", "sweep")
