"""An untrained model is never saved as a result. What can be known before training
is refused then (a loss weighting whose starting weights under- or overflow, a warm-up longer
than the stage, an optimizer that holds none of the parameters it was given); what shows only
while training (every step skipped, no weight moved) fails the run: exit 2, one `error:` line,
no results.json, no model/. Through the real CLI on a 3-layer random BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli_runs import one_line_error, tiny_recipe

from gradsurg.combiners import COMBINERS, Combined, Combiner
from gradsurg.optimizers import OPTIMIZERS
from gradsurg.weightings import WEIGHTINGS, LossWeighting


def nothing_saved(out: Path) -> None:
    assert not (out / "results.json").exists() and not (out / "model").exists()
    assert not (out / "exit_logits.safetensors").exists()


def register(monkeypatch, registry, name, obj) -> None:
    monkeypatch.setitem(registry._items, name, obj)
    monkeypatch.setitem(registry._sources, name, "a-plugin")


class NanCombiner(Combiner):
    """A combiner gone wrong: NaN every step, so the non-finite rule skips every step."""

    name = "always_nan"

    def combine(self, matrix, gram):
        return Combined(torch.full_like(matrix[0], float("nan")), {})


class Zeroing(LossWeighting):
    """A weighting gone wrong: every weighted loss is 0 x the loss, so every gradient is 0."""

    name = "zeroing"

    def weigh(self, losses):
        return self._applied(torch.zeros_like(losses), losses)


def own_sgd(params, *, lr, **options):
    """An optimizer factory that ignores the model's parameters."""
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


# --- refused before training -----------------------------------------------------------------

@pytest.mark.parametrize("weighting, message", [
    ("{name: uncertainty, init: 200}", "rounds to 0"),
    ("{name: uncertainty, init: -200}", "overflows"),
    ("{name: imtll, init: -100}", "rounds to 0"),
    ("{name: imtll, init: 90}", "overflows"),
])
def test_a_weighting_whose_starting_weights_under_or_overflow_is_refused(
        weighting, message, tmp_path, tiny_bert_dir, shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir)
    for command in ("validate", "run"):
        out = tmp_path / f"out-{command}"
        args: list[object] = [command, recipe, "--set", f"weighting={weighting}"]
        one_line_error(args + (["--output", out] if command == "run" else []),
                       "key 'weighting': weighting")
        one_line_error(args + (["--output", out] if command == "run" else []), message)
        nothing_saved(out)


@pytest.mark.slow
def test_a_warm_up_longer_than_the_stage_is_refused_before_training(tmp_path, tiny_bert_dir,
                                                                     shared_glue_dir):
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir,
                         scheduler={"warmup_steps": 1_000_000})
    out = tmp_path / "out"
    one_line_error(["run", recipe, "--output", out],
                   "a warm-up of 1000000 steps is longer than the stage's 2 optimizer steps")
    nothing_saved(out)
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir,
                         scheduler={"warmup_steps": 2}, checkpoints=False)
    result_out = tmp_path / "exact"
    from cli_runs import invoke
    assert invoke("run", recipe, "--output", result_out).exit_code == 0  # the whole stage: ok


def test_an_optimizer_that_holds_none_of_the_parameters_is_refused(
        monkeypatch, tmp_path, tiny_bert_dir, shared_glue_dir):
    register(monkeypatch, OPTIMIZERS, "own_sgd", own_sgd)
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir,
                         optimizer={"name": "own_sgd", "lr": 0.1})
    for args in (["validate", recipe], ["run", recipe, "--output", tmp_path / "out"]):
        one_line_error(args, "(optimizer 'own_sgd'): holds 0 of the")
    nothing_saved(tmp_path / "out")


# --- found while training ----------------------------------------------------------------------

def test_a_stage_whose_every_step_was_skipped_fails(monkeypatch, tmp_path, tiny_bert_dir,
                                                    shared_glue_dir):
    register(monkeypatch, COMBINERS, "always_nan", NanCombiner)
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, combiner="always_nan",
                         mode="romebert_sd")
    out = tmp_path / "out"
    one_line_error(["run", recipe, "--output", out], "all 2 optimizer step(s) were skipped")
    nothing_saved(out)


@pytest.mark.parametrize("mode", ["romebert", "deebert"])
def test_a_stage_after_which_no_weight_moved_fails(mode, monkeypatch, tmp_path, tiny_bert_dir,
                                                   shared_glue_dir):
    register(monkeypatch, WEIGHTINGS, "zeroing", Zeroing)
    if mode == "deebert":  # two stages of one group: zero the learning rate instead
        register(monkeypatch, OPTIMIZERS, "frozen_sgd",
                 lambda params, *, lr, **o: torch.optim.SGD(params, lr=0.0))
        overrides = {"optimizer": {"name": "frozen_sgd", "lr": 0.1}}
        message = "no trained weight differs from its start"
    else:  # with weight decay the weights would shrink: the zero gradients are what tells
        overrides = {"weighting": "zeroing", "optimizer": {"lr": 1e-3, "weight_decay": 0.1}}
        message = "had an exactly zero gradient"
    recipe = tiny_recipe(tmp_path, tiny_bert_dir, shared_glue_dir, mode=mode, **overrides)
    out = tmp_path / "out"
    one_line_error(["run", recipe, "--output", out], message)
    nothing_saved(out)


def test_the_digits_plugin_fails_a_run_that_moved_no_weight(monkeypatch, tmp_path):
    pytest.importorskip("gradsurg_digits")
    register(monkeypatch, WEIGHTINGS, "zeroing", Zeroing)
    out = tmp_path / "out"
    one_line_error(["run", "digits_project", "--output", out, "--set", "epochs=1",
                    "--set", "weighting=zeroing"], "had an exactly zero gradient")
    assert not (out / "results.json").exists() and not (out / "model.pt").exists()
