"""`Surgery(..., weighting=...)` in a user's own loop: equal to the explicit protocol loops wrote
before (weigh, step, `step_end` from the global raw losses unless skipped, FAMO's re-evaluation,
`epoch_end`), its state in `state_dict()`, and one-line refusals where it could not learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradsurg import Surgery
from gradsurg.errors import ConfigError, GradsurgError
from gradsurg.weightings import WEIGHTINGS
from gradsurg.weightings.loop import global_losses

GROUPS = ["final", "sd"]


class Heads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = nn.Linear(4, 6)
        self.heads = nn.ModuleList([nn.Linear(6, 1), nn.Linear(6, 1)])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.tanh(self.shared(x))
        return {"final": ((self.heads[0](h).squeeze(-1) - y) ** 2).mean() + 0.1,
                "sd": ((self.heads[1](h).squeeze(-1) + y) ** 2).mean() + 0.1}


def batches(epochs: int = 3, steps: int = 3):
    generator = torch.Generator().manual_seed(4)
    data = [(torch.randn(8, 4, generator=generator), torch.randn(8, generator=generator))
            for _ in range(steps)]
    return [data] * epochs


def explicit_protocol(name: str) -> tuple[nn.Module, nn.Module, list[dict[str, float]]]:
    """What a loop wrote before: the weighting held next to the model (trained by its
    optimizer), applied by hand, `step_end` after each step, `epoch_end` after each epoch."""
    model, weighting = Heads(), WEIGHTINGS.build(name, GROUPS, where="test")
    optimizer = torch.optim.SGD([*model.parameters(), *weighting.parameters()], lr=0.05)
    holder = nn.ModuleDict({"model": model, "loss_weighting": weighting})
    surgery = Surgery(holder, optimizer, "pcgrad")
    logs = []
    for epoch in batches():
        for x, y in epoch:
            raw = model(x, y)
            surgery.backward(weighting(raw))
            optimizer.step()
            optimizer.zero_grad()
            before = global_losses(raw, weighting)
            after = None
            if weighting.needs_losses_after_step:
                with torch.no_grad():
                    after = global_losses(model(x, y), weighting)
            weighting.step_end(before, after)
            logs.append({**{f"loss/{g}": v for g, v in zip(GROUPS, before.tolist())},
                         **{f"weighting/{k}": v for k, v in weighting.describe().items()}})
        weighting.epoch_end()
    return model, weighting, logs


@pytest.mark.parametrize("name", ["dwa", "uncertainty", "famo"])
def test_surgery_weighting_equals_the_explicit_protocol(name):
    reference, expected_weighting, expected_logs = explicit_protocol(name)
    model, weighting = Heads(), WEIGHTINGS.build(name, GROUPS, where="test")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    surgery = Surgery(model, optimizer, "pcgrad", weighting=weighting)
    optimizer.add_param_group({"params": surgery.parameters()})
    logs = []
    for epoch in batches():
        for x, y in epoch:
            surgery.backward(model(x, y), recompute=lambda x=x, y=y: model(x, y))
            optimizer.step()
            optimizer.zero_grad()
            logs.append({k: v for k, v in surgery.log_values().items()
                         if not k.startswith("weighted_")})
        surgery.epoch_end()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)
    for (key, a), b in zip(weighting.state_dict().items(),
                           expected_weighting.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert logs == expected_logs
    assert not torch.equal(weighting.weights(), torch.ones(2, dtype=torch.float64))


def test_a_weighting_by_name_is_built_at_the_first_backward_and_its_state_round_trips():
    model = Heads()
    surgery = Surgery(model, torch.optim.SGD(model.parameters(), lr=0.05), "sum",
                      weighting={"name": "dwa", "temperature": 3.0})
    assert surgery.weighting is None
    for epoch in batches():
        for x, y in epoch:
            surgery.backward(model(x, y))
            surgery.model.zero_grad()
        surgery.epoch_end()
    assert surgery.weighting is not None and surgery.weighting.temperature == 3.0
    state = surgery.state_dict()
    again = Surgery(Heads(), None, "sum", weighting="dwa")
    again.load_state_dict(state)  # kept until the weighting is built
    again.attach(torch.optim.SGD(again.model.parameters(), lr=0.05))
    x, y = batches()[0][0]
    again.backward(again.model(x, y))
    assert torch.equal(again.weighting.epochs, surgery.weighting.epochs)
    torch.testing.assert_close(again.weighting.weights(), surgery.weighting.weights())
    with pytest.raises(GradsurgError, match="without a weighting"):
        Surgery(Heads(), None, "sum", weighting="dwa").load_state_dict({"steps": 0})


@pytest.mark.parametrize(("options", "message"), [
    ({"weighting": "famo"}, r"recompute=lambda"),  # FAMO with no way to re-evaluate
    ({"weighting": "uncertainty"}, r"no optimizer param group holds"),  # built too late
    ({"weighting": "learned"}, r"no optimizer param group holds"),  # left out
    ({"weighting": "dwa", "no_optimizer": True}, r"pass the optimizer"),  # nothing steps it
])
def test_a_weighting_that_could_not_learn_is_refused_in_one_line(options, message):
    model = Heads()
    weighting = options["weighting"]
    if weighting == "learned":
        weighting = WEIGHTINGS.build("uncertainty", GROUPS, where="test")
    optimizer = None if options.get("no_optimizer") else torch.optim.SGD(
        model.parameters(), lr=0.05)
    surgery = Surgery(model, optimizer, "sum", weighting=weighting)
    x, y = batches()[0][0]
    with pytest.raises(ConfigError, match=message) as error:
        surgery.backward(model(x, y))
    assert "\n" not in str(error.value)
    assert surgery.pending_micro_batches == 0
