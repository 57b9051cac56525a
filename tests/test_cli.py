"""The command line: run, validate, list; bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradsurg.cli import app

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "plugins" / "digits_multiexit" / "gradsurg_digits" / "recipes" / (
    "digits_project.yaml")
runner = CliRunner()


def test_run_writes_results_and_resolved_recipe(tmp_path):
    result = runner.invoke(app, ["run", str(DIGITS), "--set", "epochs=2", "--output",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["exit_accuracy"]) == 4
    assert "epochs: 2" in (tmp_path / "recipe.yaml").read_text()
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == 2


def test_bad_recipes_fail_with_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("program: digits_multiexit\nepochs: [1,\n")
    cases = [
        (["run", str(tmp_path / "missing.yaml")], "does not exist"),
        (["run", str(broken)], "broken.yaml:"),
        (["run", str(DIGITS), "--set", "lr=-1"], "key 'lr'"),
        (["run", str(DIGITS), "--set", "program=nope"], "unknown program 'nope'"),
        (["run", str(DIGITS), "--set", "combiner=pcgard", "--output", str(tmp_path / "o")],
         "unknown combiner 'pcgard'"),
        (["validate", str(DIGITS), "--set", "layers=1"], "key 'layers'"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        error_lines = [line for line in lines if line.startswith("error:")]
        assert len(error_lines) == 1 and message in error_lines[0], (args, result.output)
        assert "Traceback" not in result.output


def test_validate_and_list():
    result = runner.invoke(app, ["validate", str(DIGITS)])
    assert result.exit_code == 0 and "ok" in result.output
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("digits_multiexit", "sum", "mean", "pcgrad", "project", "merge"):
        assert name in result.output
    for name in ("entropy", "normalized_entropy", "max_prob", "patience", "confidence_window",
                 "fixed"):
        assert name in result.output


def test_keys_lists_every_recipe_key_with_a_meaning():
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    result = runner.invoke(app, ["keys", "multiexit_glue"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name, info in MultiExitGlueConfig.model_fields.items():
        assert name in result.output
        assert info.description, f"recipe key {name!r} has no description"
    for key in ("optimizer", "scheduler"):  # keys holding mappings list their sub-keys
        for name, info in MultiExitGlueConfig.model_fields[key].annotation.model_fields.items():
            assert f"{key}.{name}" in result.output
            assert info.description, f"recipe key {key}.{name} has no description"
    result = runner.invoke(app, ["keys", "nope"])
    assert result.exit_code == 2 and "unknown program 'nope'" in result.output


@pytest.mark.parametrize("command", ["run", "validate", "predict", "eval", "list", "keys",
                                     "plugins", "compare"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


@pytest.mark.parametrize(("command", "target"), [
    (["keys", "multiexit_glue"], "gradsurg.programs.PROGRAMS.get"),
    (["plugins"], "gradsurg.plugins.inventory"),
])
def test_a_disk_error_in_keys_or_plugins_is_one_error_line(command, target, monkeypatch):
    """Like `run` and `compare`, every command turns an OSError into one `error:` line naming
    the path and exit code 2 (they used to catch only GradsurgError: a traceback)."""
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/nowhere/entry_points.txt")

    monkeypatch.setattr(target, unreadable)
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "/nowhere/entry_points.txt" in lines[0], lines[0]
