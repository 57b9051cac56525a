"""Per-exit loss weightings: LayerSkip's loss scales and rotational curriculum, EE-LLM's
warm-up of the exit weights. Each against a numpy rendering of the authors' rule over several
steps, the rows the combiner receives, state through a `weights_only` checkpoint, one-line
errors, and a tiny RomeBERT recipe with per-exit groups."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from state_checks import through_a_weights_only_checkpoint

from gradsurg.errors import ConfigError
from gradsurg.weightings import WEIGHTINGS

WHERE = "key 'weighting'"
SCALES = ["one", "l", "sum_l", "inv_l", "sqrt_l", "inv_sqrt_l"]


def exits(n: int) -> list[str]:
    return [f"exit{i}" for i in range(1, n + 1)]


def layerskip_reference(layer_ids: np.ndarray, n_layers: int, kind: str,
                        e_scale: float) -> np.ndarray:
    """The authors' rule on 0-based layer ids of the exits trained this step (ascending)."""
    position = layer_ids + 1.0
    scales = {"one": np.ones_like(position), "l": position, "sum_l": np.cumsum(position),
              "inv_l": 1.0 / position, "sqrt_l": np.sqrt(position),
              "inv_sqrt_l": 1.0 / np.sqrt(position)}[kind]
    scales = scales * np.where(layer_ids < n_layers - 1, e_scale, 1.0)
    return scales / scales.sum()


def multipliers(weighting, groups, values) -> np.ndarray:
    """d(sum of the weighted losses) / d L_i: what group i's gradient row is scaled by."""
    losses = {g: torch.tensor(float(v), dtype=torch.float64, requires_grad=True)
              for g, v in zip(groups, values)}
    total = sum(weighting(losses).values())
    return np.array([float(g) for g in torch.autograd.grad(total, list(losses.values()))])


@pytest.mark.parametrize("kind", SCALES)
@pytest.mark.parametrize(("n", "e_scale"), [(2, 1.0), (4, 0.5), (6, 2.0)])
def test_layerskip_scales_match_the_authors_rule(kind, n, e_scale):
    groups = exits(n)
    weighting = WEIGHTINGS.build({"name": "layerskip", "scale": kind, "early_scale": e_scale},
                                 groups, where=WHERE)
    expected = layerskip_reference(np.arange(n), n, kind, e_scale)
    values = np.linspace(0.5, 2.0, n)
    np.testing.assert_allclose(multipliers(weighting, groups, values), expected, rtol=1e-12)
    assert math.isclose(float(weighting.weights().sum()), 1.0, rel_tol=1e-12)
    # the weighted losses are w_i L_i
    weighted = weighting({g: torch.tensor(v, dtype=torch.float64) for g, v in zip(groups, values)})
    np.testing.assert_allclose([float(v) for v in weighted.values()], expected * values,
                               rtol=1e-12)


@pytest.mark.parametrize("kind", ["sum_l", "inv_l", "one"])
def test_layerskip_rotation_trains_one_early_exit_per_step_and_the_last(kind):
    """Three full cycles; group order in the recipe does not matter (exits by number)."""
    n = 5
    groups = ["exit3", "exit5", "exit1", "exit4", "exit2"]
    weighting = WEIGHTINGS.build({"name": "layerskip", "scale": kind, "curriculum": "rotational",
                                  "early_scale": 0.3}, groups, where=WHERE)
    numbers = np.array([int(g[4:]) for g in groups])
    for step in range(3 * (n - 1)):
        chosen = step % (n - 1) + 1  # exit1, exit2, ..., exit4, exit1, ...
        active = np.array([chosen, n]) - 1  # 0-based layer ids, ascending
        scales = layerskip_reference(active, n, kind, 0.3)
        expected = np.zeros(n)
        expected[numbers == chosen], expected[numbers == n] = scales[0], scales[1]
        np.testing.assert_allclose(multipliers(weighting, groups, np.ones(n)), expected,
                                   rtol=1e-12)
        weighting.step_end(torch.ones(n, dtype=torch.float64))


def eellm_reference(target, init, warmup, style, steps):
    """The authors' rule, iteration by iteration: before iteration t's forward pass, with
    warm-up on, weight = init + f(t / T) (target - init) while t <= T; then it stays."""
    target, init = np.asarray(target, float), np.asarray(init, float)
    weight = init.copy() if warmup > 0 else target.copy()
    out = []
    for t in range(steps):
        if warmup > 0 and t <= warmup:
            ratio = t / warmup
            f = ratio if style == "linear" else 0.5 * (math.cos(math.pi * (ratio + 1.0)) + 1.0)
            weight = init + f * (target - init)
        out.append(weight.copy())
    return out


@pytest.mark.parametrize("style", ["linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_eellm_warmup_matches_the_authors_rule(style, warmup):
    groups = exits(4)
    spec = {"name": "eellm_warmup", "style": style, "warmup_steps": warmup,
            "weight": {"exit1": 0.2, "exit2": 0.5, "exit3": 1.5}, "init": 0.05}
    weighting = WEIGHTINGS.build(spec, groups, where=WHERE)
    expected = eellm_reference([0.2, 0.5, 1.5], [0.05] * 3, warmup, style, warmup + 4)
    for early in expected:
        rows = multipliers(weighting, groups, [1.0, 2.0, 3.0, 4.0])
        np.testing.assert_allclose(rows, [*early, 1.0], rtol=1e-12, atol=1e-15)
        weighting.step_end(torch.ones(4, dtype=torch.float64))
    if warmup == 5:  # a cool-down too: init above weight
        down = WEIGHTINGS.build({"name": "eellm_warmup", "warmup_steps": 2, "init": 2.0,
                                 "weight": 0.5}, groups, where=WHERE)
        seen = []
        for _ in range(4):
            seen.append(float(down.current()[0]))
            down.step_end(torch.ones(4, dtype=torch.float64))
        assert seen == [2.0, 1.25, 0.5, 0.5]


def test_eellm_defaults_are_the_authors():
    """weight 1, init 0, no warm-up: every exit weighs 1 from the start."""
    weighting = WEIGHTINGS.build("eellm_warmup", exits(3), where=WHERE)
    np.testing.assert_array_equal(weighting.current().numpy(), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("spec", [
    {"name": "layerskip", "curriculum": "rotational", "scale": "inv_sqrt_l"},
    {"name": "eellm_warmup", "warmup_steps": 6, "style": "cosine"},
])
def test_state_survives_a_weights_only_checkpoint(spec):
    groups = exits(4)
    first = WEIGHTINGS.build(spec, groups, where=WHERE)
    for _ in range(4):
        first.step_end(torch.ones(4, dtype=torch.float64))
    restored = WEIGHTINGS.build(spec, groups, where=WHERE)
    restored.load_state_dict(through_a_weights_only_checkpoint(first.state_dict()))
    for _ in range(3):
        np.testing.assert_array_equal(restored.current().numpy(), first.current().numpy())
        for weighting in (first, restored):
            weighting.step_end(torch.ones(4, dtype=torch.float64))
    assert int(restored.steps) == 7


@pytest.mark.parametrize(("spec", "groups", "message"), [
    ("layerskip", ["final", "sd"], "weighs per-exit loss groups exit1..exitL"),
    ({"name": "layerskip", "scale": "log_l"}, exits(3), "scale='log_l' is invalid"),
    ({"name": "layerskip", "curriculum": "gradual"}, exits(3), "curriculum='gradual' is invalid"),
    ({"name": "layerskip", "early_scale": 0}, exits(3), "early_scale=0 is invalid"),
    ({"name": "eellm_warmup", "style": "step"}, exits(3), "style='step' is invalid"),
    ({"name": "eellm_warmup", "warmup_steps": -1}, exits(3), "warmup_steps=-1 is invalid"),
    ({"name": "eellm_warmup", "weight": {"exit1": 1.0}}, exits(3),
     "weight must give a number for each early exit ['exit1', 'exit2']"),
    ({"name": "eellm_warmup", "init": -0.5}, exits(3), "init=-0.5 is invalid"),
    ("eellm_warmup", ["exit0", "exit1"], "weighs per-exit loss groups"),
])
def test_bad_options_are_one_line_config_errors(spec, groups, message):
    with pytest.raises(ConfigError) as caught:
        WEIGHTINGS.build(spec, groups, where=WHERE)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    {"name": "layerskip", "curriculum": "rotational", "early_scale": 0.5},
    {"name": "eellm_warmup", "warmup_steps": 2, "style": "cosine"},
])
def test_per_exit_weightings_train_a_tiny_romebert_recipe(spec, tiny_bert_dir, shared_glue_dir,
                                                          tmp_path):
    """Per-exit groups (exit_groups: sd) on the 3-layer tiny model, two epochs of two steps."""
    from glue_configs import short_glue_config

    from gradsurg.programs.multiexit_glue import run

    config = short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", epochs=2,
                         exit_groups="sd", combiner="sum", weighting=spec)
    results = run(config, tmp_path)
    assert results["train"]["joint"]["steps"] == 4
    assert results["weighting"]["name"] == spec["name"]
    assert all(math.isfinite(m["accuracy"]) for m in results["exit_metrics"])
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(line["skipped_steps"] == 0 for line in log)
    weights = [[line[f"weighting/weight/exit{i}"] for i in (1, 2, 3)] for line in log]
    if spec["name"] == "layerskip":  # exit1, exit2, exit1, exit2, with the last exit each step
        active = [[w > 0 for w in step] for step in weights]
        assert active == [[True, False, True], [False, True, True]] * 2
        assert all(math.isclose(sum(step), 1.0) for step in weights)
    else:  # 0, 1/2, 1, 1 for the early exits (cosine over two steps); 1 for the last
        np.testing.assert_allclose(weights, [[0, 0, 1], [0.5, 0.5, 1], [1, 1, 1], [1, 1, 1]],
                                   atol=1e-12)


def test_recipe_checks_a_per_exit_weighting_when_read(tiny_bert_dir, shared_glue_dir):
    from glue_configs import short_glue_config
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="key 'weighting': unknown loss weighting 'gls'"):
        short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", exit_groups="sd",
                    combiner="sum", weighting="gls")
    with pytest.raises(ValidationError, match=r"weighs per-exit loss groups exit1\.\.exitL"):
        short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", weighting="layerskip")


def test_digits_exit_groups_share_the_sd_loss():
    """The digits plugin's per-exit groups: exitL is `final`, the others sum to `sd`."""
    from gradsurg_digits.program import loss_groups

    from gradsurg.recipes import load_recipe

    _, plain = load_recipe("digits_project", [])
    _, per_exit = load_recipe("digits_project", ["exit_groups=true", "combiner=sum"])
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(8, 10, generator=generator) for _ in range(plain.layers)]
    labels = torch.randint(0, 10, (8,), generator=generator)
    by_name = {g.name: g(logits, labels) for g in loss_groups(per_exit)}
    reference = {g.name: g(logits, labels) for g in loss_groups(plain)}
    assert list(by_name) == [f"exit{i}" for i in range(1, plain.layers + 1)]
    torch.testing.assert_close(by_name[f"exit{plain.layers}"], reference["final"])
    torch.testing.assert_close(sum(by_name[f"exit{i}"] for i in range(1, plain.layers)),
                               reference["sd"])


@pytest.mark.parametrize("weighting", [
    "{name: layerskip, curriculum: rotational, scale: l}",
    "{name: eellm_warmup, warmup_steps: 20, style: cosine}",
])
def test_per_exit_weightings_train_the_digits_recipe(weighting, tmp_path):
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", ["exit_groups=true", "combiner=sum",
                                               f"weighting={weighting}", "epochs=2"])
    results = train(config, tmp_path)
    accuracies = results["exit_accuracy"]
    assert all(math.isfinite(a) for a in accuracies)
    assert accuracies[-1] > 0.6, accuracies  # chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and {"exit1", "exit4", "weighting/weight/exit4"} <= set(lines[0])
    assert results["weighting"]["name"] in weighting
    if "eellm" in weighting:  # past the 20 warm-up steps: every exit weighs 1
        assert all(lines[-1][f"weighting/weight/exit{i}"] == 1.0 for i in (1, 2, 3, 4))
