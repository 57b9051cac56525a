"""The multi-exit GLUE program end to end, every mode, on a tiny BERT and real TSV rows."""

from __future__ import annotations

import json

import pytest
from glue_configs import tiny_glue_config

from gradsurg.errors import ConfigError
from gradsurg.multiexit.evaluation.sweeps import DEFAULT_THRESHOLDS
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.programs.multiexit_glue import MODES, run
from gradsurg.recipes import load_recipe


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["romebert", "romebert_sd", "deebert", "deebert_sd"])
def test_every_mode_trains_evaluates_and_saves(mode, tiny_bert_dir, shared_glue_dir, tmp_path):
    config = tiny_glue_config(tiny_bert_dir, shared_glue_dir, mode=mode)
    results = run(config, tmp_path)
    assert results["mode"] == mode and results["primary_metric"] == "accuracy"
    assert len(results["exit_metrics"]) == 3
    assert all(0.0 <= m["accuracy"] <= 1.0 for m in results["exit_metrics"])
    sweep = results["sweep"]
    assert [p["threshold"] for p in sweep] == list(DEFAULT_THRESHOLDS)
    assert sweep[0]["threshold"] == 0 and sweep[0]["time_percent"] == pytest.approx(100.0)
    assert sweep[0]["accuracy"] == results["exit_metrics"][-1]["accuracy"]
    assert sum(sweep[-1]["exit_counts"]) == 24
    stages = [s.name for s in MODES[mode].stages]
    assert list(results["train"]) == stages
    assert all(results["train"][s]["steps"] == 4 for s in stages)  # 32 rows / batch 8
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["stage"] for line in log] == [s for s in stages for _ in range(2)]
    assert all(line["skipped_steps"] == 0 for line in log)
    if mode == "romebert":
        assert {"loss/final", "loss/sd", "project/fired", "cosine/final/sd"} <= set(log[0])
    for plot in ("metric_per_exit.png", "metric_vs_time.png", "exit_layers.png"):
        assert (tmp_path / "plots" / plot).read_bytes().startswith(b"\x89PNG")
    reloaded = MultiExitModel.from_pretrained(tmp_path / "model")
    assert reloaded.num_exits == 3


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["cagrad", "gradvac", "mgda", "imtlg", "upgrad", "dualproj",
                                      "aligned_mtl", "nash_mtl", "config", "fairgrad",
                                      "graddrop", "rlw", "dbmtl", "moco", "pcd",
                                      "cr_mogm", "excess_mtl"])
def test_every_combiner_trains_a_romebert_recipe(combiner, tiny_bert_dir, shared_glue_dir,
                                                 tmp_path):
    """The combiners beyond the core ones plug into the recipe by name and log their facts."""
    config = tiny_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", combiner=combiner,
                         train_rows=16, eval_rows=8, log_every=1, save_model=False,
                         checkpoints=False)
    results = run(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 2
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    assert any(key.startswith(f"{combiner}/") for key in log[0])
    assert all(line["skipped_steps"] == 0 for line in log)


@pytest.mark.slow
def test_deebert_stages_train_only_their_parts(
    tiny_bert_dir, shared_glue_dir, tmp_path, monkeypatch
):
    """Stage 1: encoder + final exit move, early exits do not; stage 2: the reverse."""
    import torch

    from gradsurg.programs.multiexit_glue import MultiExitGlueRecipe

    changed: dict[str, dict[str, bool]] = {}
    original = MultiExitGlueRecipe.train_stage

    def spy(recipe, index, stage, *args, **kwargs):
        model = recipe.model
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = original(recipe, index, stage, *args, **kwargs)
        changed[stage.name] = {
            part: any(not torch.equal(before[n], p) for n, p in model.named_parameters()
                      if n.startswith(prefix))
            for part, prefix in (("encoder", "encoder."), ("final", "exits.2."),
                                 ("early", "exits.0."))
        }
        return result

    monkeypatch.setattr(MultiExitGlueRecipe, "train_stage", spy)
    run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, mode="deebert", save_model=False),
        tmp_path)
    assert changed["stage1"] == {"encoder": True, "final": True, "early": False}
    assert changed["stage2"] == {"encoder": False, "final": False, "early": True}


@pytest.mark.slow
def test_pair_and_regression_tasks(tiny_bert_dir, shared_glue_dir, tmp_path):
    mrpc = run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, task="mrpc"), tmp_path / "mrpc")
    assert {"f1", "accuracy"} <= set(mrpc["exit_metrics"][0])
    stsb = run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, task="stsb", mode="romebert"),
               tmp_path / "stsb")
    assert {"pearson", "spearman"} <= set(stsb["exit_metrics"][0])
    assert "sweep" not in stsb  # entropy exit needs class probabilities


def test_shipped_recipes_validate_and_bad_values_name_the_key(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for recipe in sorted(root.glob("*.yaml")):
        program, config = load_recipe(recipe)
        # offline defaults, but ELBERT's ALBERT exists only on the hub (tests use a random one)
        expected = "albert-base-v2" if config.mode == "elbert" else "minilm"
        assert program.name == "multiexit_glue" and config.model == expected, recipe
    recipe = root / "romebert_glue.yaml"
    assert load_recipe(recipe, ["model=bert-base-uncased"])[1].model == "bert-base-uncased"
    for override, message in [
        ("gamma=1.5", "key 'gamma'"), ("temperature=0", "key 'temperature'"),
        ("optimizer.lr=0", "key 'optimizer.lr'"), ("task=sst3", "unknown GLUE task"),
        ("mode=fastbert", "key 'mode'"), ("combiner=pcgard", "unknown combiner 'pcgard'"),
        ("epochz=1", "key 'epochz': unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(recipe, [override])


@pytest.mark.slow
def test_regression_exits_start_at_the_training_label_mean(tiny_bert_dir, shared_glue_dir,
                                                           tmp_path, monkeypatch):
    """Every STS-B exit's bias starts at the mean of the training labels it will see (the
    zero start made the joint modes collapse to a constant prediction)."""
    import torch

    from gradsurg.data.glue import get_task, load_glue
    from gradsurg.programs.multiexit_glue import recipe

    starts: list[list[float]] = []
    original = recipe.start_at_label_mean

    def spy(model, labels):
        original(model, labels)
        starts.append([head.classifier.bias.item() for head in model.exits])

    monkeypatch.setattr(recipe, "start_at_label_mean", spy)
    config = tiny_glue_config(tiny_bert_dir, shared_glue_dir, task="stsb", mode="romebert_sd",
                         train_rows=16, save_model=False, checkpoints=False)
    run(config, tmp_path)
    data = load_glue(get_task("stsb"), "train", data_dir=str(shared_glue_dir))
    expected = float(torch.tensor(data.shuffle(seed=42).select(range(16))["label"],
                                  dtype=torch.float64).mean())
    assert starts == [[pytest.approx(expected, rel=1e-6)] * 3]
    run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, save_model=False, checkpoints=False),
        tmp_path / "sst2")
    assert len(starts) == 1  # classification exits keep their zero bias
