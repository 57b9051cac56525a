"""bench/study.py: the planned runs' commands, and the report from finished runs (no training)."""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest
from test_compare import DEEBERT, ROMEBERT, write_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["study"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_planned_run_is_a_valid_recipe(study):
    from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe

    runs = [*study.plan("screening", list(study.CONFIGS), [42], None),
            *study.plan("paper", study.PAPER_MODES, [42, 43], None)]
    assert len(runs) == 2 * len(study.CONFIGS) + 2 * 4 * 2
    for run in runs:
        command = run.command(Path("/tmp/runs"))
        assert command[-1] == "--resume" and f"seed-{run.seed}" in command[-2]
        sets = [command[i + 1] for i, item in enumerate(command) if item == "--set"]
        recipe = apply_overrides(read_recipe(Path(command[4])), sets)
        validate_recipe(recipe, source=shlex.join(command))


def test_report_compares_configurations_with_commits_facts_and_seed_spread(study, tmp_path):
    runs = tmp_path / "runs"
    base = runs / "screening" / "sst2"
    facts = {"train": {"joint": {"steps": 3, "seconds": 1.0, "project/fired": 0.25,
                                 "cosine/final/sd": 0.4}}}
    write_run(base / "romebert" / "seed-42", "romebert", ROMEBERT, [0.75, 0.75], extra=facts)
    (base / "romebert" / "seed-42" / "commit.txt").write_text("abcdef1234567\n")
    write_run(base / "deebert" / "seed-42", "deebert", DEEBERT, [0.5, 1.0],
              extra={"tradeoff": {"auc": 0.8}})
    write_run(base / "deebert" / "seed-43", "deebert", DEEBERT, [0.5, 0.5],
              extra={"tradeoff": {"auc": 0.6}})
    output = tmp_path / "docs" / "study.md"
    written = study.write_report(runs, output)
    text = output.read_text()
    assert "### sst2, screening" in text
    assert "| romebert | abcdef1234 | 0.250 | 0.400 | - |" in text
    assert "| deebert | 2 | 75.00 ± 35.36 | 70.00 ± 14.14 |" in text
    assert "screening / stsb / exit_upgrad / seed 42" in text  # not finished: listed
    plots = [path for path in written if path.suffix == ".png"]
    assert plots and all(path.parent == tmp_path / "docs" / "study" for path in plots)
    assert all(f"study/{path.name}" in text for path in plots)
