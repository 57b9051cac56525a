"""COSMOS's conditioning of the model on the preference ray: `PreferenceConditioned` (any
model: the ray concatenated to the input, or a learned projection added at a submodule)
against the same computation by hand, a plain training loop in which one conditioned network
learns the trade-off each ray asks for, the Dirichlet stream through a checkpoint, and the
errors. The multi-exit model and recipe: `tests/test_preference_multiexit.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from state_checks import through_a_weights_only_checkpoint
from torch import nn

from gradsurg import Surgery
from gradsurg.conditioning import PreferenceConditioned, check_ray, parse_ray
from gradsurg.errors import ConfigError
from gradsurg.weightings import WEIGHTINGS

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(inputs: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 8), nn.Tanh(), nn.Linear(8, 1))


def test_the_ray_is_concatenated_to_the_input_scaled_to_sum_1():
    inner = mlp(2 + 3)
    model = PreferenceConditioned(inner, 3)
    x = torch.randn(4, 2)
    ray = torch.tensor([0.2, 0.3, 0.5])
    expected = inner(torch.cat([x, ray.expand(4, 3)], dim=1))
    torch.testing.assert_close(model(x, preference=[2.0, 3.0, 5.0]), expected)
    centre = inner(torch.cat([x, torch.full((4, 3), 1 / 3)], dim=1))
    torch.testing.assert_close(model(x), centre)  # the documented default
    model.set_preference([0, 0, 1])
    assert not torch.allclose(model(x), centre)
    assert "preference" not in model.state_dict()  # a reload starts from the centre


def test_the_projection_is_added_at_the_named_submodule():
    inner = mlp(2)
    model = PreferenceConditioned(inner, 2, at="0", size=8)
    x, ray = torch.randn(5, 2), torch.tensor([0.75, 0.25])
    weight = model.projection.linear.weight.detach().numpy()  # [8, 2]
    first = x.numpy() @ inner[0].weight.detach().numpy().T + inner[0].bias.detach().numpy()
    hidden = np.tanh(first + weight @ ray.numpy())
    expected = hidden @ inner[2].weight.detach().numpy().T + inner[2].bias.detach().numpy()
    np.testing.assert_allclose(model(x, preference=[3, 1]).detach().numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(x, preference=[1, 0]), model(x, preference=[0, 1]))
    with pytest.raises(ConfigError, match="ran without a preference ray"):
        inner(x)  # the hooked model alone would answer unconditioned


@pytest.mark.parametrize(("ray", "message"), [
    ([0.5, 0.5, 0.0], "preference [0.5, 0.5, 0.0] is invalid; allowed: 2 finite non-negative"),
    ([1.0, -0.5], "preference [1.0, -0.5] is invalid"),
    ([0.0, 0.0], "preference [0.0, 0.0] is invalid"),
    ([float("nan"), 1.0], "preference [nan, 1.0] is invalid"),
    ("ab", "preference 'ab' is invalid"),
])
def test_a_bad_ray_is_one_line(ray, message):
    model = PreferenceConditioned(mlp(4), 2)
    with pytest.raises(ConfigError) as caught:
        model(torch.randn(2, 2), preference=ray)
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize(("build", "message"), [
    (lambda m: PreferenceConditioned(m, 1), "k=1 is invalid"),
    (lambda m: PreferenceConditioned(m, 2, size=8), "size=8 sizes the projection"),
    (lambda m: PreferenceConditioned(m, 2, at="9", size=8), "at='9' names no submodule"),
    (lambda m: PreferenceConditioned(m, 2, at="0"), "size=None is invalid"),
])
def test_bad_construction_is_one_line(build, message):
    with pytest.raises(ConfigError) as caught:
        build(mlp(2))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_wrong_projection_size_or_input_is_named():
    with pytest.raises(ConfigError, match=r"'0' returned \(3, 8\).*size=5"):
        PreferenceConditioned(mlp(2), 2, at="0", size=5)(torch.randn(3, 2))
    with pytest.raises(ConfigError, match="must be floating point"):
        PreferenceConditioned(nn.Embedding(10, 4), 2)(torch.tensor([[1, 2]]))


def test_parse_ray_reads_the_command_line_form():
    torch.testing.assert_close(parse_ray("1,3", ["a", "b"], where="--preference"),
                               torch.tensor([0.25, 0.75]))
    for text in ("1,x", "1,inf", ""):
        with pytest.raises(ConfigError, match="--preference: preference"):
            parse_ray(text, ["a", "b"], where="--preference")
    with pytest.raises(ConfigError, match=r"one per loss group \['a', 'b'\]"):
        check_ray([1, 2, 3], ["a", "b"], where="x")


def train(steps: int, *, state=None, seed: int = 0, lambda_: float = 0.1):
    """Two conflicting objectives, y -> +1 and y -> -1, under COSMOS with a Dirichlet ray per
    step fed to the model: the losses' trade-off (y* = r1 - r2 for the weighted sum) can
    only be met by a model that reads the ray. Returns the model, the weighting and the rays
    the model was fed, each checked against the one the weights used that step."""
    model = PreferenceConditioned(mlp(1 + 2, seed=seed), 2)
    weighting = WEIGHTINGS.build({"name": "cosmos", "resample": True, "lambda_": lambda_,
                                  "seed": 7}, ["up", "down"], where="weighting")
    if state is not None:
        model.load_state_dict(state["model"])
        weighting.load_state_dict(through_a_weights_only_checkpoint(state["weighting"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    surgery = Surgery(model, optimizer, "sum", weighting=weighting)
    fed = []
    x = torch.ones(16, 1)
    for _ in range(steps):
        ray = weighting.current_preference
        fed.append(ray.tolist())
        y = model(x, preference=ray)
        surgery.backward({"up": ((y - 1) ** 2).mean(), "down": ((y + 1) ** 2).mean()})
        np.testing.assert_allclose(weighting.preference / weighting.preference.sum(), ray)
        optimizer.step()
        optimizer.zero_grad()
    surgery.remove()
    return model, weighting, fed


def test_a_conditioned_model_learns_the_trade_off_each_ray_asks_for():
    model, _, fed = train(200)
    assert len({tuple(r) for r in fed}) == 200  # a fresh ray every step
    x = torch.ones(1, 1)
    with torch.no_grad():
        leans_up = float(model(x, preference=[0.9, 0.1]))
        leans_down = float(model(x, preference=[0.1, 0.9]))
        middle = float(model(x))
    # the weighted sum's optimum is r1 - r2: +0.8, -0.8 and 0
    assert leans_up > 0.4 and leans_down < -0.4 and abs(middle) < 0.3, (leans_up, leans_down,
                                                                           middle)


@pytest.mark.parametrize("lambda_", [1.0, 3.0])
def test_a_large_lambda_pulls_against_the_weighted_sum(lambda_):
    """The cosine term rewards L proportional to r (the larger r_i, the larger L_i), the
    weighted sum the opposite: at lambda 1 the trade-off nearly vanishes, at 3 it reverses
    (README's numbers)."""
    model, _, _ = train(200, lambda_=lambda_)
    x = torch.ones(1, 1)
    with torch.no_grad():
        leans_up = float(model(x, preference=[0.9, 0.1]))
        leans_down = float(model(x, preference=[0.1, 0.9]))
    if lambda_ == 1.0:
        assert abs(leans_up) < 0.2 and abs(leans_down) < 0.2, (leans_up, leans_down)
    else:
        assert leans_up < -0.1 and leans_down > 0.1, (leans_up, leans_down)


def test_the_ray_stream_continues_through_a_checkpoint():
    """Model and weighting state saved after 3 steps, loaded into fresh ones: the rays fed
    in the next 3 steps are the uninterrupted run's steps 4 to 6."""
    _, _, straight = train(6)
    model, weighting, first = train(3)
    state = {"model": model.state_dict(), "weighting": weighting.state_dict()}
    _, _, rest = train(3, state=state, seed=5)
    assert first + rest == straight
