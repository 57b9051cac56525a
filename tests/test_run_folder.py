"""gradsurg/run_folder.py: a run folder's files written and read back, and programs that declare
whether they resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.errors import ConfigError
from gradsurg.programs import PROGRAMS, Program, ProgramConfig
from gradsurg.run_folder import (
    EXIT_LOGITS_FILE,
    RECIPE_FILE,
    RESULTS_FILE,
    check_run_folder,
    load_run,
    plain_defaults,
    read_saved_recipe,
    write_exit_logits,
    write_recipe,
    write_results,
)

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "plugins" / "digits_multiexit" / "gradsurg_digits" / "recipes" / (
    "digits_project.yaml")


def test_what_a_run_writes_reads_back(tmp_path):
    recipe = {"program": "multiexit_glue", "optimizer": {"lr": 2e-5}, "sweep": None}
    results = {"program": "multiexit_glue", "mode": "romebert", "task": "sst2",
               "primary_metric": "accuracy",
               "exit_metrics": [{"accuracy": 0.5}, {"accuracy": 0.75}]}
    logits, labels = torch.randn(2, 3, 2), torch.tensor([0, 1, 1])
    assert write_recipe(tmp_path, recipe) == tmp_path / RECIPE_FILE
    assert write_results(tmp_path, results) == tmp_path / RESULTS_FILE
    assert write_exit_logits(tmp_path, logits, labels) == tmp_path / EXIT_LOGITS_FILE
    assert read_saved_recipe(tmp_path) == recipe
    run = load_run(tmp_path)
    assert run.results == results and run.folder == tmp_path
    assert torch.equal(run.logits, logits) and torch.equal(run.labels, labels)
    assert read_saved_recipe(tmp_path / "elsewhere") is None
    assert not list(tmp_path.glob(".*"))  # written atomically: no temporary file left


def test_the_folder_checks_resume_refuses(tmp_path):
    write_recipe(tmp_path, {"program": "p", "optimizer": {"lr": 2e-5}, "sweep": [0.1]})
    resolved = {"program": "p", "optimizer": {"lr": 3e-5}, "sweep": [0.2]}
    with pytest.raises(ConfigError, match=r"key 'optimizer.lr' is 3e-05 here but 2e-05 in"):
        check_run_folder(tmp_path, resolved, resume=True, evaluation_keys=frozenset({"sweep"}))
    check_run_folder(tmp_path, {**resolved, "optimizer": {"lr": 2e-5}}, resume=True,
                     evaluation_keys=frozenset({"sweep"}))  # an evaluation key may change
    write_results(tmp_path, {"done": True})
    with pytest.raises(ConfigError, match="holds a finished run"):
        check_run_folder(tmp_path, resolved, resume=False)


def test_a_key_added_after_a_run_started_counts_as_its_default_on_resume(tmp_path):
    """A run folder from before `gradient_equilibrium` existed resumes when the key is at its
    default, and is refused when the key was turned on; a missing key built by a factory
    (`optimizer`) still counts as a change."""
    from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

    defaults = plain_defaults(MultiExitGlueConfig)
    assert defaults["gradient_equilibrium"] is False and "optimizer" not in defaults
    resolved = MultiExitGlueConfig(program="multiexit_glue").model_dump(mode="json")
    older = {k: v for k, v in resolved.items() if k != "gradient_equilibrium"}
    write_recipe(tmp_path, older)
    check_run_folder(tmp_path, resolved, resume=True, defaults=defaults)
    with pytest.raises(ConfigError, match=r"key 'gradient_equilibrium' is True here but "
                       r"not set \(its default, False\) in"):
        check_run_folder(tmp_path, {**resolved, "gradient_equilibrium": True}, resume=True,
                         defaults=defaults)
    with pytest.raises(ConfigError, match="key 'gradient_equilibrium'"):
        check_run_folder(tmp_path, resolved, resume=True)  # without defaults: a change
    write_recipe(tmp_path, {k: v for k, v in resolved.items() if k != "optimizer"})
    with pytest.raises(ConfigError, match=r"key 'optimizer' is .* but not set in"):
        check_run_folder(tmp_path, resolved, resume=True, defaults=defaults)


def test_programs_declare_whether_they_resume():
    with pytest.raises(TypeError, match="resumable"):
        Program(name="x", config=ProgramConfig, run=lambda config, folder: {}, summary="x")
    assert PROGRAMS.get("multiexit_glue").resumable is True
    assert PROGRAMS.get("digits_multiexit").resumable is False


def test_resume_of_a_program_that_cannot_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(DIGITS), "--resume", "--output", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "'digits_multiexit' cannot resume" in lines[0], result.output
    assert not out.exists()
