"""COSMOS's conditioning in the multi-exit model and program: the ray's projection added to
the embeddings (forward and the early-exit loop alike), saved and reloaded with the model,
the recipe key `preference_conditioning` and its refusals, `gradsurg predict / eval
--preference`, and a tiny RomeBERT run trained conditioned (slow)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.errors import ConfigError
from gradsurg.multiexit.exit_loop import EarlyExitRunner
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import FixedPolicy

cli = CliRunner()
GROUPS = ["final", "sd"]


@pytest.fixture(scope="module")
def conditioned(tiny_bert_dir, tmp_path_factory):
    """A conditioned tiny model (projection scaled up so the ray shows in the outputs),
    saved with its tokenizer; `(model, tokenizer, folder)`."""
    torch.manual_seed(0)
    model, tokenizer = MultiExitModel.from_backbone(str(tiny_bert_dir), num_labels=2)
    model.condition_on_preference(GROUPS)
    with torch.no_grad():
        model.preference_projection.linear.weight.mul_(100.0)
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(200.0)
    model.config.task, model.config.labels = "sst2", ["0", "1"]
    folder = model.save_pretrained(tmp_path_factory.mktemp("conditioned"), tokenizer=tokenizer)
    return model.eval(), tokenizer, folder


def encode(tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_the_ray_shifts_the_embeddings_in_forward_and_the_exit_loop(conditioned):
    model, tokenizer, _ = conditioned
    ids, mask = encode(tokenizer, ["a gorgeous film", "the plot is a mess, sadly"])
    runner = EarlyExitRunner(model, FixedPolicy(layer=model.num_exits))
    answers = {}
    for ray in ([1.0, 0.0], [0.0, 1.0]):
        model.set_preference(ray)
        with torch.no_grad():
            embedded = model.embed(ids, mask)
            expected = model.encoder.embed(ids, mask) + model.preference_projection.linear(
                torch.tensor(ray))
            torch.testing.assert_close(embedded, expected)
            answers[tuple(ray)] = model(ids, mask)[-1]
        torch.testing.assert_close(runner(ids, mask).logits, answers[tuple(ray)],
                                   rtol=1e-4, atol=1e-4)
    assert not torch.allclose(answers[(1.0, 0.0)], answers[(0.0, 1.0)], atol=1e-3)


def test_a_reload_keeps_the_conditioning_and_starts_at_the_centre(conditioned):
    model, _, folder = conditioned
    again = MultiExitModel.from_pretrained(folder)
    assert again.config.preference_groups == GROUPS
    torch.testing.assert_close(again.preference_projection.linear.weight,
                               model.preference_projection.linear.weight)
    assert again.preference.tolist() == [0.5, 0.5]
    json_config = json.loads((folder / "gradsurg_config.json").read_text())
    assert json_config["preference_groups"] == GROUPS


def test_an_unconditioned_model_refuses_a_preference(tiny_bert_dir):
    model, _ = MultiExitModel.from_backbone(str(tiny_bert_dir), num_labels=2)
    assert model.preference_projection is None and "preference" not in dict(
        model.named_buffers())
    with pytest.raises(ConfigError, match="trained without preference conditioning"):
        model.set_preference([0.5, 0.5])
    model.condition_on_preference(GROUPS)
    with pytest.raises(ConfigError, match="already conditioned"):
        model.condition_on_preference(GROUPS)
    with pytest.raises(ConfigError, match=r"one per loss group \['final', 'sd'\]"):
        model.set_preference([1, 2, 3])


def predict(folder, *options):
    result = cli.invoke(app, ["predict", str(folder), "--policy", "fixed", "--layer", "3",
                              *options], input="a gorgeous film\nthe plot is a mess\n")
    return result


def test_predict_answers_for_the_preference_given(conditioned):
    _, _, folder = conditioned
    outputs, said = {}, {}
    for option in ((), ("--preference", "1,1"), ("--preference", "3,0"), ("--preference", "0,2")):
        result = predict(folder, *option)
        assert result.exit_code == 0, result.output
        outputs[option] = [json.loads(line)["confidence"] for line in result.stdout.splitlines()]
        said[option] = result.stderr
    assert "preference: final 0.5, sd 0.5" in said[()]  # the default, said
    assert "preference: final 1, sd 0" in said[("--preference", "3,0")]
    assert outputs[()] == outputs[("--preference", "1,1")]  # the centre
    assert outputs[("--preference", "3,0")] != outputs[("--preference", "0,2")]


@pytest.mark.parametrize(("option", "message"), [
    ("1,2,3", "--preference: preference [1.0, 2.0, 3.0] is invalid"),
    ("1,x", "--preference: preference '1,x' is invalid"),
    ("-1,2", "--preference: preference [-1.0, 2.0] is invalid"),
])
def test_a_bad_preference_is_one_error_line(conditioned, option, message):
    result = predict(conditioned[2], "--preference", option)
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_an_unconditioned_model_refuses_preference_on_the_command_line(saved_model):
    for command in (["predict", str(saved_model)], ["eval", str(saved_model)]):
        result = cli.invoke(app, [*command, "--preference", "0.5,0.5"], input="fine\n")
        assert result.exit_code == 2
        assert "trained without preference conditioning" in " ".join(result.output.split())


@pytest.mark.parametrize(("weighting", "message"), [
    (None, "weighting is none"),
    ("uncertainty", "weighting is uncertainty"),
    ({"name": "cosmos"}, "preference is fixed"),
    ({"name": "pbi", "resample": False}, "preference is fixed"),
])
def test_the_recipe_key_needs_a_resampled_ray(weighting, message, tiny_bert_dir,
                                              shared_glue_dir):
    from glue_configs import short_glue_config
    from pydantic import ValidationError

    extra = {} if weighting is None else {"weighting": weighting}
    with pytest.raises(ValidationError) as caught:
        short_glue_config(tiny_bert_dir, shared_glue_dir, preference_conditioning=True, **extra)
    assert "key 'preference_conditioning'" in str(caught.value) and message in str(caught.value)
    config = short_glue_config(tiny_bert_dir, shared_glue_dir, preference_conditioning=True,
                               weighting={"name": "cosmos", "resample": True})
    assert config.preference_conditioning


@pytest.mark.slow
def test_a_tiny_romebert_trains_conditioned_and_serves_any_preference(
        tiny_bert_dir, shared_glue_dir, tmp_path, monkeypatch):
    """The model is fed each step's ray (recorded at every training forward), learns its
    projection, is evaluated at the centre and reloads conditioned."""
    from glue_configs import short_glue_config

    from gradsurg.programs.multiexit_glue import recipe, run

    fed, initial = [], {}
    original_forward, original_condition = recipe.forward, MultiExitModel.condition_on_preference

    def recording_forward(model, batch):
        fed.append(model.preference.tolist())
        return original_forward(model, batch)

    def recording_condition(model, groups):
        original_condition(model, groups)
        initial["weight"] = model.preference_projection.linear.weight.detach().clone()

    monkeypatch.setattr(recipe, "forward", recording_forward)
    monkeypatch.setattr(MultiExitModel, "condition_on_preference", recording_condition)

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert_sd",
                               exit_groups="sd", save_model=True, epochs=2,
                               preference_conditioning=True,
                               weighting={"name": "cosmos", "resample": True, "seed": 3})
    results = run(config, tmp_path)
    groups = ["exit1", "exit2", "exit3"]
    assert results["preference_conditioning"] == {"groups": groups,
                                                  "eval_preference": [0.333333] * 3}
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(line["skipped_steps"] == 0 and math.isfinite(line["weighting/weight/exit1"])
               for line in log)
    model = MultiExitModel.from_pretrained(results["model_dir"])
    assert model.config.preference_groups == groups
    assert len(fed) == 4 and fed[0] == pytest.approx([1 / 3] * 3)  # 2 epochs of 2 steps
    assert len({tuple(ray) for ray in fed}) == 4  # a fresh Dirichlet ray every step
    assert all(sum(ray) == pytest.approx(1.0) and min(ray) >= 0 for ray in fed)
    moved = (model.preference_projection.linear.weight.detach() - initial["weight"]).abs().max()
    assert float(moved) > 1e-4  # trained: the ray reached the loss
    result = predict(results["model_dir"], "--preference", "0.2,0.3,0.5")
    assert result.exit_code == 0, result.output
    assert "preference: exit1 0.2, exit2 0.3, exit3 0.5" in result.stderr
