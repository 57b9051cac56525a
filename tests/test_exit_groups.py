"""Per-exit loss groups (`exit_groups`): one gradient row per exit, equal to each exit's own
backward pass, summing to today's `sd` group, and usable by any combiner in a recipe."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from glue_configs import tiny_glue_config
from typer.testing import CliRunner

from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.terms import LOSS_TERMS, per_exit_groups
from gradsurg.programs.multiexit_glue import run
from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig

GAMMA, T = 0.9, 3.0


def trunk_and_exits(num_exits: int, num_labels: int, seed: int = 0):
    """A shared trunk (one linear layer per depth) with an exit after each depth."""
    torch.manual_seed(seed)
    layers = torch.nn.ModuleList(torch.nn.Linear(5, 5) for _ in range(num_exits))
    heads = torch.nn.ModuleList(torch.nn.Linear(5, num_labels) for _ in range(num_exits))

    def forward(x):
        out = []
        for layer, head in zip(layers, heads):
            x = torch.tanh(layer(x))
            out.append(head(x))
        return out

    return layers, forward


def by_hand(student, teacher, labels, regression):
    """The paper's per-exit SD share, written from its formula with softmax and logs."""
    if regression:
        task = ((student.reshape(-1) - labels) ** 2).mean()
        distill = ((student - teacher.detach()) ** 2).mean()
    else:
        task = -torch.log_softmax(student, -1)[torch.arange(len(labels)), labels].mean()
        p = torch.softmax(teacher.detach() / T, -1)
        log_q = torch.log_softmax(student / T, -1)
        distill = T**2 * (p * (torch.log(p) - log_q)).sum(-1).mean()
    return (1 - GAMMA) * task + GAMMA * distill


def build_groups(kind: str, num_exits: int):
    return {name: LOSS_TERMS.build(
        {**spec, "gamma": GAMMA, "temperature": T} if isinstance(spec, dict)
        and spec["name"] == "exit_self_distillation" else spec, num_exits, where=name)
        for name, spec in per_exit_groups(kind, num_exits).items()}


@pytest.mark.parametrize("num_labels", [1, 3])
def test_rows_equal_each_exits_manual_backward(num_labels):
    layers, forward = trunk_and_exits(4, num_labels)
    x = torch.randn(6, 5)
    labels = torch.randn(6) if num_labels == 1 else torch.randint(0, num_labels, (6,))
    params = list(layers.parameters())
    groups = build_groups("sd", 4)
    assert list(groups) == ["exit1", "exit2", "exit3", "exit4"]
    out = forward(x)
    for i, term in enumerate(groups.values()):
        row = torch.autograd.grad(term(out, labels), params, retain_graph=True,
                                  allow_unused=True)
        if i < 3:
            expected = by_hand(out[i], out[-1], labels, num_labels == 1)
        else:
            expected = (F.mse_loss(out[-1].reshape(-1), labels) if num_labels == 1
                        else F.cross_entropy(out[-1], labels))
        manual = torch.autograd.grad(expected, params, retain_graph=True, allow_unused=True)
        for got, want in zip(row, manual):
            if want is None:
                assert got is None or not got.any()
            else:
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
        # exit i reaches layers 1..i only: deeper layers get no gradient from its row
        assert all(g is None or not g.any() for g in row[2 * (i + 1):])


@pytest.mark.parametrize("num_labels", [1, 2])
def test_early_exit_groups_sum_to_the_sd_group(num_labels):
    layers, forward = trunk_and_exits(5, num_labels, seed=1)
    x = torch.randn(7, 5)
    labels = torch.randn(7) if num_labels == 1 else torch.randint(0, num_labels, (7,))
    out = forward(x)
    groups = build_groups("sd", 5)
    total = sum(groups[f"exit{i}"](out, labels) for i in range(1, 5))
    sd = LOSS_TERMS.build({"name": "self_distillation", "gamma": GAMMA, "temperature": T}, 5,
                         where="sd")(out, labels)
    torch.testing.assert_close(total, sd)
    params = list(layers.parameters())
    for a, b in zip(torch.autograd.grad(total, params, retain_graph=True, allow_unused=True),
                    torch.autograd.grad(sd, params, allow_unused=True)):
        if b is None:  # the last layer feeds only the detached teacher
            assert a is None
        else:
            torch.testing.assert_close(a, b)


def test_task_kind_gives_each_exits_plain_task_loss():
    _, forward = trunk_and_exits(3, 2)
    x, labels = torch.randn(4, 5), torch.tensor([0, 1, 1, 0])
    out = forward(x)
    groups = build_groups("task", 3)
    for i in range(3):
        torch.testing.assert_close(groups[f"exit{i + 1}"](out, labels),
                                   F.cross_entropy(out[i], labels))


@pytest.mark.parametrize("spec", [
    {"name": "exit_task", "exit": 0}, {"name": "exit_task", "exit": 4},
    {"name": "exit_task", "exit": True}, {"name": "exit_self_distillation", "exit": 3},
    {"name": "exit_self_distillation", "exit": 1, "gamma": 2},
])
def test_bad_exit_numbers_are_config_errors(spec):
    with pytest.raises(ConfigError, match="loss group 'g'"):
        LOSS_TERMS.build(spec, 3, where="loss group 'g'")


@pytest.mark.slow
def test_sum_over_exit_groups_trains_the_same_model_as_romebert_sd(
        tiny_bert_dir, shared_glue_dir, tmp_path):
    """`sum` of per-exit groups is romebert_sd's gradient; the runs end with equal metrics
    (the matrix path and the one-backward shortcut differ only in rounding)."""
    common = dict(mode="romebert_sd", train_rows=16, eval_rows=16, log_every=1,
                  save_model=False, checkpoints=False, threads=1)
    plain = run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, **common), tmp_path / "plain")
    per_exit = run(tiny_glue_config(tiny_bert_dir, shared_glue_dir, exit_groups="sd",
                               combiner={"name": "sum"}, **common), tmp_path / "per_exit")
    for a, b in zip(plain["exit_metrics"], per_exit["exit_metrics"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"])
    log = [json.loads(x) for x in (tmp_path / "per_exit" / "train_log.jsonl").open()]
    plain_log = [json.loads(x) for x in (tmp_path / "plain" / "train_log.jsonl").open()]
    for line, reference in zip(log, plain_log):
        total = line["loss/exit1"] + line["loss/exit2"]
        assert total == pytest.approx(reference["loss/sd"], rel=1e-4)
        assert line["loss/exit3"] == pytest.approx(reference["loss/final"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("combiner", ["pcgrad", "upgrad", "imtlg"])
def test_per_exit_groups_train_with_a_combiner(combiner, tiny_bert_dir, shared_glue_dir,
                                               tmp_path):
    config = tiny_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", exit_groups="sd",
                         combiner=combiner, train_rows=16, eval_rows=8, log_every=1,
                         save_model=False, checkpoints=False)
    results = run(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 2
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").open()]
    assert {"loss/exit1", "loss/exit2", "loss/exit3", "grad_norm/exit1",
            "cosine/exit1/exit3", "cosine/exit2/exit3"} <= set(log[0])
    assert (tmp_path / "exit_logits.safetensors").is_file()


def test_project_between_exits_is_checked_against_the_models_depth(
        tiny_bert_dir, shared_glue_dir, tmp_path):
    config = tiny_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", exit_groups="sd",
                         combiner={"name": "project", "target": "exit9", "reference": "exit1"})
    with pytest.raises(ConfigError, match=r"loss group 'exit9' does not exist.*exit1, exit2, "
                       r"exit3"):
        run(config, tmp_path)
    assert not (tmp_path / "train_log.jsonl").exists()


runner = CliRunner()


@pytest.mark.parametrize(("overrides", "message"), [
    (["mode=deebert", "exit_groups=sd"], "mode deebert has no per-exit form"),
    (["mode=pabee", "exit_groups=task"], "mode pabee has no per-exit form"),
    (["exit_groups=sd", "combiner=null"], "needs a 'combiner' in mode romebert"),
    (["exit_groups=sd", "loss_groups={a: final_task, b: final_task}"], "keep one"),
    (["exit_groups=sd"], "loss group 'final' does not exist with exit_groups"),
    (["exit_groups=all"], "key 'exit_groups'"),
])
def test_bad_exit_group_recipes_are_one_line_errors(overrides, message):
    from cli_runs import ROMEBERT_RECIPE, one_line_error

    args: list[object] = ["validate", ROMEBERT_RECIPE]
    for item in overrides:
        args += ["--set", item]
    one_line_error(args, message)  # exit 2, one `error:` line holding it, no traceback


def test_exit_groups_key_is_documented():
    assert "exit1 .. exitL" in MultiExitGlueConfig.model_fields["exit_groups"].description
