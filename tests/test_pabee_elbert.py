"""PABEE and ELBERT: their loss terms against hand computations, their recipes end to end,
and every shipped recipe on every backbone adapter (tiny random configs, real SST-2 rows)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.programs.multiexit_glue import run
from gradsurg.recipes import apply_overrides, read_recipe, validate_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["romebert", "romebert_sd", "deebert", "deebert_sd", "pabee", "elbert"]
BACKBONES = ["bert", "roberta", "mpnet", "albert"]


def three_exits() -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    logits = [torch.randn(5, 2, generator=generator, dtype=torch.float64) for _ in range(3)]
    return logits, torch.tensor([0, 1, 1, 0, 1])


def test_layer_weighted_is_the_depth_weighted_average_of_exit_losses():
    logits, labels = three_exits()
    ce = [F.cross_entropy(x, labels).item() for x in logits]
    expected = (1 * ce[0] + 2 * ce[1] + 3 * ce[2]) / 6
    got = LOSS_TERMS.build("layer_weighted", 3, where="test")(logits, labels)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-6, 6), min_size=1, max_size=11),
       st.floats(0.0, 20.0))
def test_learned_weights_are_sigmoids_and_sum_to_the_total(raw, extra):
    n = len(raw) + 1
    total = n - 1 + 0.01 + extra
    term = LOSS_TERMS.build({"name": "learned_exit_weights", "total": total}, n, where="test")
    with torch.no_grad():
        term.logits.copy_(torch.tensor(raw))
    weights = term.exit_weights().detach().double()
    early = torch.sigmoid(torch.tensor(raw, dtype=torch.float64))
    torch.testing.assert_close(weights[:-1], early, rtol=1e-6, atol=1e-7)
    assert weights.sum().item() == pytest.approx(total, rel=1e-5)
    assert weights[-1].item() >= total - (n - 1) - 1e-5  # the final exit keeps a positive weight


def test_learned_weights_loss_and_gradient_match_the_hand_derivation():
    logits, labels = three_exits()
    term = LOSS_TERMS.build({"name": "learned_exit_weights", "total": 4.0}, 3, where="test")
    with torch.no_grad():
        term.logits.copy_(torch.tensor([0.3, -1.2]))
    loss = term([x.float() for x in logits], labels)
    ce = [F.cross_entropy(x, labels).item() for x in logits]
    w = [1 / (1 + math.exp(-0.3)), 1 / (1 + math.exp(1.2))]
    w.append(4.0 - w[0] - w[1])
    assert loss.item() == pytest.approx(sum(a * b for a, b in zip(w, ce)), rel=1e-6)
    loss.backward()
    # dL/dW_i = w_i (1 - w_i) (L_i - L_n): the final exit takes what an early one gives up
    expected = [w[i] * (1 - w[i]) * (ce[i] - ce[2]) for i in range(2)]
    torch.testing.assert_close(term.logits.grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)
    assert term.describe()["exit_weight/3"] == pytest.approx(w[2], rel=1e-6)


def test_loss_term_specs_fail_with_the_recipe_key():
    with pytest.raises(ConfigError, match=re.escape(
            "loss_groups.x: loss term 'learned_exit_weights': total=2.0 is invalid")):
        LOSS_TERMS.build({"name": "learned_exit_weights", "total": 2.0}, 4,
                        where="loss_groups.x")
    with pytest.raises(ConfigError, match=r"loss_groups\.x .*unexpected keyword argument 'alpha'"):
        LOSS_TERMS.build({"name": "layer_weighted", "alpha": 1}, 4, where="loss_groups.x")
    assert {"final_task", "early_task_sum", "self_distillation", "layer_weighted",
            "learned_exit_weights"} <= set(LOSS_TERMS.names())


def recipe_config(name: str, overrides: list[str]):
    path = ROOT / "recipes" / f"{name}_glue.yaml"
    recipe = apply_overrides(read_recipe(path), overrides)
    return validate_recipe(recipe, source=str(path))[1]


def small(model: Path, glue: Path, **extra: object) -> list[str]:
    values = {"model": str(model), "data_dir": str(glue), "train_rows": 16, "eval_rows": 16,
              "batch_size": 8, "eval_batch_size": 16, "epochs": 1, "max_length": 32,
              "optimizer.lr": 1e-3, "log_every": 1, "threads": 2, **extra}
    return [f"{key}={value}" for key, value in values.items()]


@pytest.mark.slow
def test_pabee_recipe_trains_and_sweeps_patience(tiny_bert_dir, shared_glue_dir, tmp_path):
    config = recipe_config("pabee", small(tiny_bert_dir, shared_glue_dir, save_model="false"))
    assert config.mode == "pabee" and config.exit_policy == "patience"
    results = run(config, tmp_path)
    assert results["exit_policy"] == {"name": "patience"}
    assert sorted(point["patience"] for point in results["sweep"]) == [1.0, 2.0]  # 1..L-1
    assert all(sum(point["exit_counts"]) == 16 for point in results["sweep"])
    assert results["train"]["joint"]["steps"] == 2 and "loss/exits" in results["train"]["joint"]


@pytest.mark.slow
def test_elbert_recipe_on_a_random_albert_shares_one_exit_and_learns_its_weights(
        tiny_backbone_dir, shared_glue_dir, tmp_path):
    albert = tiny_backbone_dir("albert")
    config = recipe_config("elbert", small(albert, shared_glue_dir, checkpoint_every=1))
    results = run(config, tmp_path)
    assert results["exit_policy"]["name"] == "confidence_window"
    weights = [results["loss_terms"][f"joint/exits/exit_weight/{i}"] for i in (1, 2, 3)]
    assert sum(weights) == pytest.approx(3.0, abs=1e-5)
    start = 1 / (1 + math.exp(-4.0))  # ELBERT's start, the default
    assert all(abs(w - start) > 1e-6 for w in weights[:2])  # trained away from it
    # the weights are checkpointed with the model (a resumed run continues them)
    checkpoint = sorted((tmp_path / "checkpoints").glob("step-*"))[-1] / "model.safetensors"
    with safe_open(str(checkpoint), "pt") as stored:
        logits = stored.get_tensor("loss_terms.joint.exits.logits")
    torch.testing.assert_close(torch.sigmoid(logits), torch.tensor(weights[:2]), atol=1e-6,
                               rtol=0)
    # one exit module after every layer, saved once, reloaded shared, no loss terms saved
    model = MultiExitModel.from_pretrained(tmp_path / "model")
    assert model.config.shared_exit and model.config.model_type == "albert"
    assert all(head is model.exits[0] for head in model.exits)
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as stored:
        keys = list(stored.keys())
    assert sum(key.endswith("classifier.weight") for key in keys) == 1
    assert not any(key.startswith("loss_terms") for key in keys)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_trains_on_every_backbone(recipe, backbone, tiny_backbone_dir,
                                               shared_glue_dir, tmp_path):
    """The shipped recipe files, only the backbone and the size changed: each adapter serves
    every mode (one step per stage, SST-2 rows)."""
    folder = tiny_backbone_dir(backbone)
    config = recipe_config(recipe, small(folder, shared_glue_dir, train_rows=8, eval_rows=8,
                                         save_model="false", checkpoints="false"))
    results = run(config, tmp_path)
    assert len(results["exit_metrics"]) == 3
    assert all(r["steps"] == 1 for r in results["train"].values())
    losses = [value for r in results["train"].values() for key, value in r.items()
              if key.startswith("loss/")]
    assert losses and all(math.isfinite(v) for v in losses)
