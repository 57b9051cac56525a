"""Non-finite losses or gradients skip the optimizer step without touching any weight."""

from __future__ import annotations

import copy

import pytest
import torch
from models import TwoHeads, batch, group_losses

from gradsurg import Surgery
from gradsurg.errors import ConfigError, NonFiniteError

PROJECT = {"name": "project", "target": "a", "reference": "b"}
COMBINERS = ["sum", "mean", PROJECT, {"name": "project", "target": "b", "reference": "a"},
             "pcgrad"]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(before: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), key


def poisoned(losses: dict[str, torch.Tensor], group: str, value: float) -> dict[str, torch.Tensor]:
    out = dict(losses)
    out[group] = out[group] * value  # NaN or inf flows into that group's gradient
    return out


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_bad_step_touches_nothing_and_good_steps_continue(combiner, poison, clip) -> None:
    model = TwoHeads()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    surgery = Surgery(model, optimizer, combiner, max_grad_norm=clip)
    x, y = batch()
    # One good step first, so AdamW has moments that a bad step could corrupt.
    surgery.backward(group_losses(model, x, y))
    optimizer.step()
    optimizer.zero_grad()
    before, state_before = snapshot(model), copy.deepcopy(optimizer.state_dict())

    surgery.backward(poisoned(group_losses(model, x, y), "b", poison))
    optimizer.step()
    optimizer.zero_grad()
    assert_same(before, model)
    after_state = optimizer.state_dict()["state"]
    for index, values in state_before["state"].items():
        for key, value in values.items():
            assert torch.equal(value, after_state[index][key]), (index, key)
    assert surgery.skipped_steps == 1 and surgery.nonfinite_in_a_row == 1
    assert surgery.diagnostics["nonfinite/skipped"] == 1.0

    # The next good step is the same as if the bad one had never happened.
    twin = copy.deepcopy(model)
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=0.1, weight_decay=0.1)
    twin_optimizer.load_state_dict(state_before)
    twin_surgery = Surgery(twin, twin_optimizer, combiner, max_grad_norm=clip)
    for m, opt, sur in ((model, optimizer, surgery), (twin, twin_optimizer, twin_surgery)):
        sur.backward(group_losses(m, x, y))
        opt.step()
        opt.zero_grad()
    assert surgery.nonfinite_in_a_row == 0 and "nonfinite/skipped" not in surgery.diagnostics
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_too_many_in_a_row_stops_with_a_message_naming_the_group() -> None:
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, PROJECT, max_nonfinite_steps=3)
    x, y = batch()
    before = snapshot(model)
    for attempt in range(3):
        losses = poisoned(group_losses(model, x, y), "a", float("nan"))
        if attempt < 2:
            surgery.backward(losses)
        else:  # the step's backward combines, so that is where the run stops
            with pytest.raises(NonFiniteError, match=r"3 optimizer steps in a row skipped "
                               r"\(last: step 3, loss group\(s\) a not finite\)"):
                surgery.backward(losses)
        optimizer.step()
        optimizer.zero_grad()
    assert_same(before, model)
    assert surgery.skipped_steps == 3


def test_a_nan_in_one_micro_batch_spoils_the_step() -> None:
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "pcgrad", accumulation_steps=2)
    x, y = batch()
    before = snapshot(model)
    surgery.backward(group_losses(model, x[:4], y[:4]))
    surgery.backward(poisoned(group_losses(model, x[4:], y[4:]), "b", float("nan")))
    optimizer.step()
    assert_same(before, model)
    assert surgery.skipped_steps == 1


def test_raise_mode_and_ignore_mode() -> None:
    x, y = batch()
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "sum", nonfinite="raise")
    with pytest.raises(NonFiniteError, match="optimizer step 1: loss group"):
        surgery.backward(poisoned(group_losses(model, x, y), "b", float("inf")))

    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, "sum", nonfinite="ignore")
    surgery.backward(poisoned(group_losses(model, x, y), "b", float("nan")))
    optimizer.step()  # unchecked: the NaN reaches the weights, as asked
    assert torch.isnan(model.head_b.weight).any()
    assert surgery.skipped_steps == 0


def test_state_round_trip_and_bad_options() -> None:
    model = TwoHeads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, PROJECT)
    x, y = batch()
    surgery.backward(poisoned(group_losses(model, x, y), "a", float("nan")))
    optimizer.step()
    state = surgery.state_dict()
    twin = TwoHeads()
    other = Surgery(twin, torch.optim.SGD(twin.parameters(), lr=0.1), PROJECT)
    other.load_state_dict(state)
    assert (other.skipped_steps, other.nonfinite_in_a_row) == (1, 1)
    with pytest.raises(ConfigError, match="nonfinite='maybe' is unknown"):
        Surgery(model, optimizer, "sum", nonfinite="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_nonfinite_steps must be >= 1"):
        Surgery(model, optimizer, "sum", max_nonfinite_steps=0)
