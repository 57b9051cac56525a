"""bench/reproduce_romebert.py's reporting from cached runs (no training here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_romebert",
                                                  ROOT / "bench" / "reproduce_romebert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_results(mode: str, accuracies: list[float]) -> dict:
    return {
        "program": "multiexit_glue", "mode": mode, "task": "rte", "model": "minilm",
        "primary_metric": "accuracy",
        "exit_metrics": [{"accuracy": a} for a in accuracies],
        "sweep": [{"threshold": 0.0, "accuracy": accuracies[-1], "time_percent": 100.0},
                  {"threshold": 0.5, "accuracy": accuracies[0], "time_percent": 50.0}],
        "train": {"stage1": {"steps": 3, "seconds": 2.0}, "stage2": {"steps": 3, "seconds": 1.0}},
    }


def finished_run(script, runs: Path, mode: str, overrides: list[str], results: dict) -> None:
    recipe_path = ROOT / "recipes" / f"{mode}_glue.yaml"
    recipe = script.apply_overrides(script.read_recipe(recipe_path), ["task=rte", *overrides])
    _, config = script.validate_recipe(recipe, source=str(recipe_path))
    folder = runs / "rte" / mode
    folder.mkdir(parents=True)
    (folder / "recipe.json").write_text(json.dumps(config.model_dump(mode="json")))
    (folder / "results.json").write_text(json.dumps(results))


def run_main(script, monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["reproduce_romebert.py", *args])
    script.main()


def test_report_only_reports_finished_runs_and_lists_missing(script, tmp_path, monkeypatch):
    runs, report = tmp_path / "runs", tmp_path / "docs" / "reproduction.md"
    finished_run(script, runs, "deebert", ["epochs=1"],
                 fake_results("deebert", [0.5, 0.52, 0.54, 0.56, 0.58, 0.6]))
    run_main(script, monkeypatch, "--tasks", "rte", "--modes", "deebert", "romebert",
             "--set", "epochs=1", "--runs", str(runs), "--report", str(report), "--report-only")
    text = report.read_text()
    assert "| deebert | 50.00 | 52.00 | 54.00 | 56.00 | 58.00 | 60.00 |" in text
    assert "Not run yet for rte: romebert." in text
    # The budget table is `gradsurg compare`'s: sweep points and fixed exits (L1 at 16.7%).
    assert ("| deebert | 50.00 (16.7) | 50.00 (16.7) | 52.00 (33.3) | 54.00 (50.0) | "
            "54.00 (50.0) | 60.00 (100.0) |") in text
    assert "--report-only" in text
    # Nothing was trained or prepared for the missing mode.
    assert not (runs / "rte" / "romebert").exists()
    summary = json.loads((report.parent / "reproduction" / "summary.json").read_text())
    assert list(summary["rte"]) == ["deebert"]


def test_report_only_with_no_finished_run(script, tmp_path, monkeypatch):
    report = tmp_path / "reproduction.md"
    run_main(script, monkeypatch, "--tasks", "rte", "--runs", str(tmp_path / "runs"),
             "--report", str(report), "--report-only")
    assert "Not run yet for rte: deebert, deebert_sd, romebert_sd, romebert." in report.read_text()


def test_cached_run_with_other_settings_is_refused(script, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    finished_run(script, runs, "deebert", ["epochs=1"], fake_results("deebert", [0.5] * 6))
    with pytest.raises(SystemExit, match=r"trained with other settings \(epochs\)"):
        run_main(script, monkeypatch, "--tasks", "rte", "--modes", "deebert", "--set",
                 "epochs=2", "--runs", str(runs), "--report", str(tmp_path / "r.md"),
                 "--report-only")
