"""The recipe is resolved once (issue 27): a whole run through the CLI looks each recipe name
up a stated number of times, and every layer below takes the objects `setup` built.

A lookup is a `Registry.get` (what `Registry.build` does first) or, for the GLUE task, which is
a table rather than a registry, a resolution of its spelling (`get_task`). A name looked up again
further down (by the metrics, the sweeps, the evaluation) would show here as a higher count.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml
from typer.testing import CliRunner

import gradsurg.data.glue as glue
from gradsurg.cli import app
from gradsurg.registry import Registry

runner = CliRunner()

#: How often a run of RECIPE looks each name up, and why.
EXPECTED = {
    ("program", "multiexit_glue"): 1,  # the recipe's `program:`, to pick the schema
    ("task", "sst2"): 1,  # the schema's check; the validated config keeps the TaskSpec
    ("backbone adapter", "bert"): 1,  # the model's type, when the backbone is built
    # 2: the key's own check (a field validator builds it alone), then the check across keys
    # (`sweep` against the policy), which builds the ExitPolicySetting the run keeps
    ("exit policy", "patience"): 2,
    # 3: the key's own check, its group names against the mode's groups (both in validation,
    # before a run folder is made), and the one the run trains with (built in `setup`)
    ("combiner", "pcgrad"): 3,
    # 2: validation builds it on the mode's groups; setup builds the one the run trains with
    ("loss weighting", "uncertainty"): 2,
    ("loss term", "final_task"): 1,  # the mode's default groups, built once in setup
    ("loss term", "self_distillation"): 1,
    ("optimizer", "adamw"): 1,  # OptimizerSettings keeps the factory: the check and the stage
}
# `scheduler: linear` is a value of a Literal, not a registry name: nothing to look up.

RECIPE = {
    "program": "multiexit_glue", "mode": "romebert", "task": "sst2",
    "train_rows": 16, "eval_rows": 8, "batch_size": 8, "eval_batch_size": 8,
    "epochs": 1, "max_length": 32, "threads": 1, "save_model": False, "checkpoints": False,
    "combiner": {"name": "pcgrad", "seed": 1}, "weighting": "uncertainty",
    "exit_policy": {"name": "patience", "patience": 2},
    "optimizer": {"name": "adamw", "lr": 1e-3}, "scheduler": {"name": "linear"},
}


@pytest.mark.slow
def test_a_run_looks_every_recipe_name_up_a_stated_number_of_times(
        tiny_bert_dir, shared_glue_dir, tmp_path, monkeypatch):
    lookups: Counter[tuple[str, str]] = Counter()
    get, spelling = Registry.get, glue._spelling_key

    def counting_get(self, name):
        lookups[(self.kind, name)] += 1
        return get(self, name)

    def counting_spelling(name):
        lookups[("task", name)] += 1
        return spelling(name)

    monkeypatch.setattr(Registry, "get", counting_get)
    monkeypatch.setattr(glue, "_spelling_key", counting_spelling)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "model": str(tiny_bert_dir),
                                      "data_dir": str(shared_glue_dir)}))
    result = runner.invoke(app, ["run", str(recipe), "--output", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert dict(lookups) == EXPECTED
    results = yaml.safe_load((tmp_path / "run" / "results.json").read_text())
    # the objects reached the bottom: the sweep, the dense sweep and the summary were made
    assert results["exit_policy"] == {"name": "patience", "patience": 2}
    assert [p["patience"] for p in results["sweep"]] == [2, 1]  # 3 exits: 1..L-1
    assert results["dense_sweep"]["parameter"] == "patience"
    assert "tradeoff" in results
