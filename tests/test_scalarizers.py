"""Preference scalarizations as loss weightings: `pbi` (MOEA/D) and `cosmos`. The rows the
combiner receives against numpy renderings of each formula's gradient and torchjd 0.18's
scalarizers (autograd), the seeded Dirichlet resampling, state through a `weights_only`
checkpoint, errors, and training runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchjd.scalarization as tjd
from hypothesis import given, settings
from hypothesis import strategies as st
from state_checks import through_a_weights_only_checkpoint

from gradsurg.errors import ConfigError
from gradsurg.weightings import WEIGHTINGS

WHERE = "key 'weighting'"
GROUPS = ["final", "sd", "aux"]
FEW = settings(max_examples=40, deadline=None)
POSITIVE = st.floats(1e-2, 1e2)


def rows(weighting, values) -> np.ndarray:
    """d(sum of the weighted losses) / d L_i: what group i's gradient row is scaled by."""
    losses = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    total = sum(weighting(dict(zip(GROUPS, losses.unbind()))).values())
    return torch.autograd.grad(total, losses)[0].numpy()


def pbi_gradient(values, preference, theta, reference=(0.0, 0.0, 0.0)) -> np.ndarray:
    """d/dL (d1 + theta d2) at L - z: r_hat + theta P (L - z) / d2, P the projector off
    r_hat."""
    values = np.asarray(values) - np.asarray(reference, float)
    r = np.asarray(preference, float)
    r_hat = r / np.linalg.norm(r)
    perpendicular = values - (values @ r_hat) * r_hat
    return r_hat + theta * perpendicular / np.sqrt(perpendicular @ perpendicular + 1e-12)


def cosmos_gradient(values, preference, lam) -> np.ndarray:
    """d/dL (r.L - lambda r.L / (|r| |L|))."""
    values, r = np.asarray(values), np.asarray(preference, float)
    nr, nl = np.linalg.norm(r), np.linalg.norm(values)
    return r - lam * (r / (nr * nl) - (r @ values) * values / (nr * nl**3))


@FEW
@given(values=st.lists(POSITIVE, min_size=3, max_size=3),
       preference=st.lists(POSITIVE, min_size=3, max_size=3), theta=st.floats(0, 10),
       reference=st.none() | st.lists(st.floats(-5, 5), min_size=3, max_size=3))
def test_pbi_rows_are_its_gradient(values, preference, theta, reference):
    spec = {"name": "pbi", "theta": theta, "preference": preference}
    weighting = WEIGHTINGS.build(spec if reference is None else {**spec, "reference": reference},
                                 GROUPS, where=WHERE)
    out = rows(weighting, values)
    z = [0.0] * 3 if reference is None else reference
    # near the ray d2 ~ 1e-6 amplifies the perpendicular's rounding (1e-16 |L|) by theta / d2
    np.testing.assert_allclose(out, pbi_gradient(values, preference, theta, z), rtol=1e-9,
                               atol=1e-6)
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    scalarizer = tjd.PBI(theta, torch.tensor(preference, dtype=torch.float64),
                         None if reference is None else torch.tensor(reference,
                                                                     dtype=torch.float64))
    np.testing.assert_allclose(out, torch.autograd.grad(scalarizer(x), x)[0].numpy(),
                               rtol=1e-12, atol=1e-12)


@FEW
@given(values=st.lists(POSITIVE, min_size=3, max_size=3),
       preference=st.lists(POSITIVE, min_size=3, max_size=3), lam=st.floats(0, 8))
def test_cosmos_rows_are_its_gradient(values, preference, lam):
    weighting = WEIGHTINGS.build({"name": "cosmos", "lambda_": lam, "preference": preference},
                                 GROUPS, where=WHERE)
    out = rows(weighting, values)
    np.testing.assert_allclose(out, cosmos_gradient(values, preference, lam), rtol=1e-9,
                               atol=1e-12)
    x = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    scalarizer = tjd.COSMOS(lam, torch.tensor(preference, dtype=torch.float64))
    np.testing.assert_allclose(out, torch.autograd.grad(scalarizer(x), x)[0].numpy(),
                               rtol=1e-12, atol=1e-12)


def test_pbi_on_the_preference_ray_is_the_projection():
    """Losses along r: d2 = 0, the rows are r_hat (the 1e-12 keeps them finite)."""
    weighting = WEIGHTINGS.build({"name": "pbi", "preference": [1, 2, 2]}, GROUPS, where=WHERE)
    np.testing.assert_allclose(rows(weighting, [0.5, 1.0, 1.0]), [1 / 3, 2 / 3, 2 / 3],
                               atol=1e-5)


def test_pbi_reference_moves_the_ray_to_the_ideal_point():
    """Losses on the ray through z, not through 0: d2 = 0 there, the rows are r_hat; the
    same losses around z = 0 lie off the ray and get the perpendicular pull."""
    spec = {"name": "pbi", "preference": [1, 2, 2], "reference": [0.5, -1.0, 2.0]}
    shifted = WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    on_ray = [0.5 + 0.5, -1.0 + 1.0, 2.0 + 1.0]
    np.testing.assert_allclose(rows(shifted, on_ray), [1 / 3, 2 / 3, 2 / 3], atol=1e-5)
    plain = WEIGHTINGS.build({**spec, "reference": None}, GROUPS, where=WHERE)
    assert np.abs(rows(plain, on_ray) - [1 / 3, 2 / 3, 2 / 3]).max() > 0.5


def test_pbi_reference_is_configuration_not_state():
    """Checkpoints keep their keys: a state saved with one reference loads into a PBI with
    another (or none), and each keeps its own reference."""
    spec = {"name": "pbi", "resample": True, "seed": 1}
    with_z = WEIGHTINGS.build({**spec, "reference": [1, 2, 3]}, GROUPS, where=WHERE)
    without = WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    assert set(with_z.state_dict()) == set(without.state_dict())
    with_z.step_end(torch.ones(3, dtype=torch.float64))
    without.load_state_dict(through_a_weights_only_checkpoint(with_z.state_dict()))
    torch.testing.assert_close(without.preference, with_z.preference, rtol=0, atol=0)
    assert without.reference.tolist() == [0.0, 0.0, 0.0]
    assert with_z.reference.tolist() == [1.0, 2.0, 3.0]


def test_current_preference_is_the_ray_on_the_simplex():
    fixed = WEIGHTINGS.build({"name": "cosmos", "preference": [1, 2, 5]}, GROUPS, where=WHERE)
    assert fixed.current_preference.tolist() == [0.125, 0.25, 0.625]
    drawn = WEIGHTINGS.build({"name": "cosmos", "resample": True}, GROUPS, where=WHERE)
    assert drawn.current_preference.tolist() == [1 / 3] * 3  # the default's first step
    drawn.step_end(torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(drawn.current_preference, drawn.preference, rtol=0, atol=1e-15)
    drawn.current_preference.zero_()  # a copy: the weighting's ray is untouched
    assert float(drawn.preference.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["pbi", "cosmos"])
def test_resampling_draws_seeded_points_of_the_simplex_and_survives_a_checkpoint(name):
    spec = {"name": name, "resample": True, "concentration": 0.7, "seed": 3}
    first = WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    losses = torch.ones(3, dtype=torch.float64)
    seen = []
    for _ in range(3):
        first.step_end(losses)
        seen.append(first.preference.clone())
        assert math.isclose(float(first.preference.sum()), 1.0) and (first.preference > 0).all()
    assert not torch.equal(seen[0], seen[1])
    again = WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    for expected in seen:
        again.step_end(losses)
        torch.testing.assert_close(again.preference, expected, rtol=0, atol=0)
    restored = WEIGHTINGS.build({**spec, "seed": 99}, GROUPS, where=WHERE)
    restored.load_state_dict(through_a_weights_only_checkpoint(first.state_dict()))
    for weighting in (first, restored):
        weighting.step_end(losses)
    torch.testing.assert_close(restored.preference, first.preference, rtol=0, atol=0)
    fixed = WEIGHTINGS.build({"name": name, "preference": [1, 2, 3]}, GROUPS, where=WHERE)
    fixed.step_end(losses)
    assert fixed.preference.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(("spec", "message"), [
    ({"name": "pbi", "theta": -1}, "theta=-1 is invalid"),
    ({"name": "pbi", "preference": [1, 2]}, "preference=[1, 2] is invalid"),
    ({"name": "cosmos", "preference": [1, 0, 2]}, "preference=0 is invalid"),
    ({"name": "cosmos", "lambda_": "x"}, "lambda_='x' is invalid"),
    ({"name": "cosmos", "resample": "yes"}, "resample='yes' is invalid"),
    ({"name": "pbi", "concentration": 0}, "concentration=0 is invalid"),
    ({"name": "pbi", "reference": [0, 1]}, "reference=[0, 1] is invalid"),
    ({"name": "pbi", "reference": [0, float("nan"), 1]}, "reference=nan is invalid"),
    ({"name": "pbi", "reference": [0, float("inf"), 1]}, "reference=inf is invalid"),
    ({"name": "pbi", "reference": "0,0,0"}, "reference='0,0,0' is invalid"),
    ({"name": "cosmos", "reference": [0, 0, 0]}, "reference"),
])
def test_bad_options_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError) as caught:
        WEIGHTINGS.build(spec, GROUPS, where=WHERE)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("spec", ["{name: pbi, theta: 0.5, preference: [2, 1]}",
                                  "{name: cosmos, resample: true}"])
def test_both_train_the_digits_recipe(spec, tmp_path):
    """theta 0.5: from theta > 1 on, PBI weighs a loss below its share of the preference ray
    negatively (it pulls the losses onto the ray), and at theta 2 the final exit falls to
    chance here (test below)."""
    from gradsurg_digits.program import train

    from gradsurg.recipes import load_recipe

    _, config = load_recipe("digits_project", [f"weighting={spec}", "epochs=2"])
    results = train(config, tmp_path)
    assert results["exit_accuracy"][-1] > 0.6, results["exit_accuracy"]  # chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(line["weighting/weight/sd"]) for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [{"name": "pbi", "theta": 2.0},
                                  {"name": "cosmos", "resample": True}])
def test_both_train_a_tiny_romebert_recipe(spec, tiny_bert_dir, shared_glue_dir, tmp_path):
    from glue_configs import short_glue_config

    from gradsurg.programs.multiexit_glue import run

    results = run(short_glue_config(tiny_bert_dir, shared_glue_dir, mode="romebert", epochs=1,
                              weighting=spec), tmp_path)
    assert results["train"]["joint"]["steps"] == 2 and results["weighting"]["name"] == spec["name"]
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(line["skipped_steps"] == 0 and math.isfinite(line["weighting/weight/final"])
               for line in log)


def test_pbi_with_a_large_theta_raises_a_loss_below_its_share():
    """Two groups, losses off the ray: the perpendicular pull theta / sqrt(2) outweighs the
    projection's r_hat_i from theta > 1, so the lower loss is weighted negatively."""
    groups = ["final", "sd"]
    for theta, negative in ((0.5, False), (2.0, True)):
        weighting = WEIGHTINGS.build({"name": "pbi", "theta": theta}, groups, where=WHERE)
        losses = torch.tensor([0.1, 1.0], dtype=torch.float64, requires_grad=True)
        total = sum(weighting(dict(zip(groups, losses.unbind()))).values())
        weights = torch.autograd.grad(total, losses)[0]
        assert bool(weights[0] < 0) == negative and bool(weights[1] > 0)
