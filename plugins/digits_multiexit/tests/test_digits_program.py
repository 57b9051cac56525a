"""The non-BERT example: same groups and combiners, a multi-exit MLP on real digits."""

from __future__ import annotations

import json

import pytest
from gradsurg_digits.program import DigitsConfig, train

from gradsurg.errors import ConfigError
from gradsurg.programs import PROGRAMS
from gradsurg.recipes import load_recipe


def test_program_is_registered_through_its_entry_point():
    assert PROGRAMS.get("digits_multiexit").config is DigitsConfig


@pytest.mark.parametrize("combiner", ["sum", "pcgrad", {"name": "project", "target": "final",
                                                         "reference": "sd"}])
def test_every_exit_learns_with_each_combiner(combiner):
    config = DigitsConfig(program="digits_multiexit", epochs=6, combiner=combiner,
                          include=["layers.*"])
    results = train(config)
    accuracies = results["exit_accuracy"]
    assert len(accuracies) == 4
    assert min(accuracies) > 0.85, accuracies  # chance is 0.1; measured about 0.93-0.95
    assert results["selected_parameters"] == [f"layers.{i}.0.{w}" for i in range(4)
                                              for w in ("weight", "bias")]


@pytest.mark.parametrize("combiner", ["dualproj", "aligned_mtl", "nash_mtl", "config",
                                      "fairgrad", "graddrop", "rlw", "dbmtl", "moco"])
def test_every_exit_learns_with_the_issue_18_combiners(combiner, tmp_path):
    """Same six epochs; the bar is learning well above chance (0.1), not the 0.85 above:
    measured (bench/digits_combiners.py), dualproj, aligned_mtl, fairgrad, graddrop and rlw
    clear 0.85 too, nash_mtl and config (the same direction for two groups) 0.847 on the final
    exit, moco 0.72 and dbmtl 0.65 (its gradient averages lag; 0.68 after ten epochs)."""
    config = DigitsConfig(program="digits_multiexit", epochs=6, combiner=combiner,
                          include=["layers.*"])
    results = train(config, tmp_path)
    assert min(results["exit_accuracy"]) > 0.5, results["exit_accuracy"]
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert any(key.startswith(f"{combiner}/") for key in log[-1])  # its facts are logged


def test_projection_fires_and_is_logged(tmp_path):
    config = DigitsConfig(program="digits_multiexit", epochs=3,
                          combiner={"name": "project", "target": "final", "reference": "sd"})
    results = train(config, tmp_path)
    assert 0.0 < results["projection_fired_fraction"] <= 1.0
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    assert {"final", "sd", "grad_norm/final", "grad_norm/sd", "cosine/final/sd",
            "project/fired"} <= set(lines[0])


def test_shipped_recipe_validates_and_bad_keys_are_named(tmp_path):
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "gradsurg_digits" / "recipes" / (
        "digits_project.yaml")
    program, config = load_recipe(recipe)
    assert program.name == "digits_multiexit" and config.combiner["name"] == "project"
    with pytest.raises(ConfigError, match=r"key 'gamma'.*less than or equal to 1"):
        load_recipe(recipe, ["gamma=1.5"])
    with pytest.raises(ConfigError, match=r"key 'epoch': unknown key"):
        load_recipe(recipe, ["epoch=3"])


def test_recipe_is_registered_by_name_and_validates_through_the_cli():
    from typer.testing import CliRunner

    from gradsurg.cli import app
    from gradsurg.recipes import RECIPES

    assert RECIPES.source("digits_project") == "gradsurg-digits"
    result = CliRunner().invoke(app, ["validate", "digits_project"])
    assert result.exit_code == 0, result.output
    assert "ok digits_project (digits_multiexit)" in result.output
    program, config = load_recipe("digits_project", ["epochs=2"])
    assert program.name == "digits_multiexit" and config.epochs == 2
