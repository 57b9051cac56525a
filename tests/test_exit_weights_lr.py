"""ELBERT's learned exit weights train at a learning rate of their own (`exit_weights_lr`), in
an optimizer group without weight decay; the key is refused where no loss term learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.optimizers import OptimizerSettings, build_optimizer
from gradsurg.programs.multiexit_glue.config import DEFAULT_EXIT_WEIGHTS_LR
from gradsurg.programs.multiexit_glue.recipe import param_groups

ROOT = Path(__file__).resolve().parents[1]
ELBERT = ROOT / "recipes" / "elbert_glue.yaml"
runner = CliRunner()


def elbert_args(model: Path, glue: Path, output: Path, *extra: str) -> list[str]:
    """Four steps of the ELBERT recipe through the CLI."""
    sets = {"model": model, "data_dir": glue, "train_rows": 32, "eval_rows": 16,
            "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "max_length": 32,
            "optimizer.lr": 2e-5, "threads": 1, "save_model": "false", "checkpoints": "false",
            "scheduler.name": "constant"}
    args = ["run", str(ELBERT)]
    for item in [*(f"{k}={v}" for k, v in sets.items()), *extra]:
        args += ["--set", item]
    return [*args, "--output", str(output)]


def run_elbert(model: Path, glue: Path, output: Path, *extra: str) -> list[float]:
    """The early exits' learned weights after `elbert_args`' run."""
    result = runner.invoke(app, elbert_args(model, glue, output, *extra))
    assert result.exit_code == 0, result.output
    learned = json.loads((output / "results.json").read_text())["loss_terms"]
    return [learned[f"joint/exits/exit_weight/{i}"] for i in (1, 2)]  # 3 layers: 2 early


@pytest.mark.slow
def test_exit_weights_move_measurably_through_the_cli(tiny_bert_dir, shared_glue_dir,
                                                     tmp_path):
    """Four steps at the model's lr 2e-5: the weights' own default (1e-2) moves them. A
    checkpoint whose optimizer has one group (written before the weights had their own) is
    refused on --resume in one line."""
    start_at_zero = "loss_groups={exits: {name: learned_exit_weights, init: 0}}"  # slope 1/4
    moved = [abs(w - 0.5) for w in run_elbert(tiny_bert_dir, shared_glue_dir, tmp_path,
                                              "checkpoints=true", "checkpoint_every=2",
                                              start_at_zero)]
    (checkpoint,) = (tmp_path / "checkpoints").glob("step-*")
    state = torch.load(checkpoint / "state.pt", weights_only=True)
    first, second = state["optimizer"]["param_groups"]
    first["params"] += second["params"]
    state["optimizer"]["param_groups"] = [first]
    torch.save(state, checkpoint / "state.pt")
    (checkpoint / "checksums.json").unlink()  # written before checksums were, like the rest
    result = runner.invoke(app, [*elbert_args(tiny_bert_dir, shared_glue_dir, tmp_path,
                                              "checkpoints=true", "checkpoint_every=2",
                                              start_at_zero),
                                 "--resume"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "optimizer does not fit" in errors[0] and "Traceback" not in result.output
    # one Adam step moves W by about its lr (sigmoid's slope at 0 is 1/4): at 2e-5, four steps
    # could not move a weight by more than ~2e-5; and no further than four steps of 1e-2 can
    assert max(moved) > 2e-3, moved
    assert max(moved) <= 1.5 * 4 * DEFAULT_EXIT_WEIGHTS_LR / 4, moved


@pytest.mark.parametrize(("lr", "low", "high"), [(1e-2, 0.02, 0.03), (2e-5, 4e-5, 6e-5)])
def test_how_far_the_weights_move_is_set_by_their_lr(lr, low, high):
    """Ten AdamW steps of the real loss term, its groups from `param_groups`, against a model
    weight at lr 2e-5: an early exit whose loss stays above the final one loses weight by
    about 10 x lr / 4 (Adam's step is about lr whatever the gradient's size)."""
    term = LOSS_TERMS.build({"name": "learned_exit_weights", "init": 0.0}, 3, where="test")
    model = torch.nn.Linear(2, 2)
    settings = OptimizerSettings(name="adamw", lr=2e-5, weight_decay=0.01)
    groups = param_groups([*model.parameters(), *term.parameters()],
                          {id(p) for p in term.parameters()}, lr=lr, optimizer=settings)
    optimizer = build_optimizer(settings, groups)
    labels = torch.tensor([0, 1, 0, 1])
    sure = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [4.0, -4.0], [-4.0, 4.0]])
    for _ in range(10):
        optimizer.zero_grad()
        # exits 1 and 2 unsure (loss log 2), the final exit sure: both early weights drop
        logits = [model(torch.zeros(4, 2)), model(torch.zeros(4, 2)), sure]
        term(logits, labels).backward()
        optimizer.step()
    weights = term.exit_weights().detach()
    assert all(low < 0.5 - w < high for w in weights[:2].tolist()), weights


def test_learned_parameters_get_their_own_group_without_weight_decay():
    model = torch.nn.Linear(3, 2)
    weights = torch.nn.Parameter(torch.zeros(4))
    params = [*model.parameters(), weights]
    settings = OptimizerSettings(name="adamw", lr=3e-5, weight_decay=0.1)
    groups = param_groups(params, {id(weights)}, lr=0.05, optimizer=settings)
    assert [len(g["params"]) for g in groups] == [2, 1]
    assert groups[1]["params"][0] is weights
    assert groups[1]["lr"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert "lr" not in groups[0] and "weight_decay" not in groups[0]  # the recipe's settings
    assert param_groups(params, set(), lr=0.05, optimizer=settings) == [{"params": params}]
    rprop = OptimizerSettings(name="rprop", lr=1e-3)  # no weight_decay option: none is set
    assert "weight_decay" not in param_groups(params, {id(weights)}, lr=0.05,
                                              optimizer=rprop)[1]


@pytest.mark.parametrize(("recipe", "sets"), [
    ("deebert_glue.yaml", []),
    ("romebert_glue.yaml", ["exit_groups=sd", "combiner=upgrad"]),
    ("elbert_glue.yaml", ["loss_groups={exits: layer_weighted}"]),
])
def test_the_key_is_refused_where_no_loss_term_learns(recipe, sets):
    args = ["validate", str(ROOT / "recipes" / recipe), "--set", "exit_weights_lr=0.01"]
    for item in sets:
        args += ["--set", item]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "key 'exit_weights_lr'" in lines[0] and "would do nothing" in lines[0]


def test_the_key_is_accepted_wherever_a_term_learns():
    for recipe, sets in [("elbert_glue.yaml", []),
                         ("romebert_glue.yaml",
                          ["loss_groups={final: final_task, exits: learned_exit_weights}",
                           "combiner={name: project, target: final, reference: exits}"])]:
        args = ["validate", str(ROOT / "recipes" / recipe), "--set", "exit_weights_lr=0.05"]
        for item in sets:
            args += ["--set", item]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["validate", str(ELBERT), "--set", "exit_weights_lr=0"])
    assert result.exit_code == 2 and "exit_weights_lr" in result.output


def test_the_weights_start_where_elberts_code_starts_them_unless_told():
    """By default at ELBERT's 4.0 (three seeds on MiniLM favoured it, docs/depth_study.md);
    `init` starts them anywhere else, e.g. 0 (every early weight 0.5)."""
    expected = 1 / (1 + math.exp(-4.0))
    for spec in ("learned_exit_weights", {"name": "learned_exit_weights", "init": 4.0}):
        weights = LOSS_TERMS.build(spec, 4, where="test").exit_weights().detach()
        torch.testing.assert_close(weights[:3], torch.full((3,), expected))
        assert weights[3].item() == pytest.approx(4 - 3 * expected)  # each exit about 1
    half = LOSS_TERMS.build({"name": "learned_exit_weights", "init": 0}, 4, where="test")
    torch.testing.assert_close(half.exit_weights().detach(),
                               torch.tensor([0.5, 0.5, 0.5, 2.5]))
    for bad in (float("nan"), "4", True):
        with pytest.raises(ConfigError, match=r"loss_groups\.exits: .*init=.* is invalid"):
            LOSS_TERMS.build({"name": "learned_exit_weights", "init": bad}, 4,
                             where="loss_groups.exits")
