"""The recipe's `optimizer:` and `scheduler:` keys: any torch.optim optimizer by name, plugin
optimizers through OPTIMIZERS, schedules equal to transformers' own, old keys refused."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from gradsurg.errors import ConfigError
from gradsurg.optimizers import (
    OPTIMIZERS,
    OptimizerSettings,
    SchedulerSettings,
    build_optimizer,
    build_scheduler,
    check_optimizer,
    refuse_moved_keys,
)


def params() -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The LR before each of `steps` steps (what the training loop steps with)."""
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_the_default_is_adamw_at_2e_5_without_weight_decay_as_before():
    built = build_optimizer(OptimizerSettings(), params())
    before = torch.optim.AdamW(params(), lr=2e-5, weight_decay=0.0)
    assert type(built) is torch.optim.AdamW
    assert built.param_groups[0].keys() == before.param_groups[0].keys()
    for key in before.param_groups[0]:
        if key != "params":
            assert built.param_groups[0][key] == before.param_groups[0][key], key


@pytest.mark.parametrize(("name", "cls"), [
    ("sgd", torch.optim.SGD), ("SGD", torch.optim.SGD), ("adam", torch.optim.Adam),
    ("RMSprop", torch.optim.RMSprop), ("adagrad", torch.optim.Adagrad),
    ("AdamW", torch.optim.AdamW), ("rprop", torch.optim.Rprop),
])
def test_any_torch_optimizer_by_name_in_any_case(name, cls):
    settings = OptimizerSettings(name=name, lr=0.5)
    assert settings.name == name.lower()  # the resolved recipe records one spelling
    optimizer = build_optimizer(settings, params())
    assert type(optimizer) is cls and optimizer.param_groups[0]["lr"] == 0.5


def test_other_keys_go_to_the_constructor():
    settings = OptimizerSettings.model_validate(
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01})
    group = build_optimizer(settings, params()).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.01)
    # YAML 1.1 reads `1e-6` as a string; it is the number it looks like, in lists too
    settings = OptimizerSettings.model_validate(
        {"name": "adam", "eps": "1e-6", "betas": [0.9, "9.8e-1"]})
    group = build_optimizer(settings, params()).param_groups[0]
    assert group["eps"] == 1e-6 and tuple(group["betas"]) == (0.9, 0.98)
    assert OptimizerSettings.model_validate("sgd").name == "sgd"  # `optimizer: sgd`


def test_weight_decay_0_is_left_out_for_an_optimizer_without_it():
    assert type(build_optimizer(OptimizerSettings(name="rprop"), params())) is torch.optim.Rprop
    with pytest.raises(ConfigError, match=r"key 'optimizer' \(optimizer 'rprop'\).*"
                                          r"weight_decay"):
        build_optimizer(OptimizerSettings(name="rprop", weight_decay=0.1), params())


def test_an_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValidationError, match=r"unknown optimizer 'adamx'; allowed: .*adamw.*sgd"):
        OptimizerSettings(name="adamx")


NO_STEP = "cannot take a training step on a weight matrix and a bias vector: "


@pytest.mark.parametrize(("options", "message"), [
    ({"betaz": 0.9}, r"key 'optimizer' \(optimizer 'adamw'\): got an unexpected keyword "
     r"argument 'betaz'; options are lr, betas, eps, weight_decay"),
    ({"betas": "fast"}, r"key 'optimizer' \(optimizer 'adamw'\): invalid options"),
    ({"name": "lbfgs"}, r"\(optimizer 'lbfgs'\): " + NO_STEP + "TypeError"),
    ({"name": "sparseadam"}, r"\(optimizer 'sparseadam'\): cannot take a training step"),
    ({"name": "muon"}, r"\(optimizer 'muon'\): " + NO_STEP + "ValueError: Muon only supports 2D"),
    ({"capturable": True}, r"\(optimizer 'adamw'\): " + NO_STEP + "AssertionError"),
])
def test_problems_show_when_the_recipe_is_read(options, message):
    """A dummy weight and bias take one step, so what step 1 would meet is met now."""
    with pytest.raises(ConfigError, match=message):
        check_optimizer(OptimizerSettings.model_validate(options))


def test_a_registered_optimizer_is_built_by_its_name(monkeypatch):
    def halved_sgd(parameters, *, lr: float, weight_decay: float = 0.0, damping: float = 0.5):
        return torch.optim.SGD(parameters, lr=lr * damping, weight_decay=weight_decay)

    monkeypatch.setitem(OPTIMIZERS._items, "halved_sgd", halved_sgd)
    monkeypatch.setitem(OPTIMIZERS._sources, "halved_sgd", "a-plugin")
    settings = OptimizerSettings.model_validate({"name": "halved_sgd", "lr": 0.4, "damping": 0.25})
    check_optimizer(settings)
    assert build_optimizer(settings, params()).param_groups[0]["lr"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="options are lr, weight_decay, damping"):
        build_optimizer(OptimizerSettings.model_validate(
            {"name": "halved_sgd", "momentum": 1}), params())


@pytest.mark.parametrize(("name", "reference"), [
    ("linear", "get_linear_schedule_with_warmup"),
    ("cosine", "get_cosine_schedule_with_warmup"),
    ("constant", "get_constant_schedule_with_warmup"),
])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.3])
def test_schedules_equal_transformers_own(name, reference, warmup_ratio):
    transformers = pytest.importorskip("transformers")
    total = 10
    ours = build_scheduler(SchedulerSettings(name=name, warmup_ratio=warmup_ratio),
                           torch.optim.SGD(params(), lr=0.1), total_steps=total)
    factory = getattr(transformers, reference)
    optimizer = torch.optim.SGD(params(), lr=0.1)
    warmup = int(warmup_ratio * total)
    theirs = (factory(optimizer, warmup) if name == "constant"
              else factory(optimizer, warmup, total))
    assert lrs(ours, total) == lrs(theirs, total)  # bit for bit: the default must not move


def test_warmup_steps_instead_of_the_ratio():
    scheduler = build_scheduler(SchedulerSettings(name="constant", warmup_steps=4),
                                torch.optim.SGD(params(), lr=1.0), total_steps=100)
    assert lrs(scheduler, 6) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    with pytest.raises(ValidationError, match="warmup_ratio or warmup_steps, not both"):
        SchedulerSettings(warmup_ratio=0.1, warmup_steps=4)
    with pytest.raises(ValidationError, match="cosine"):
        SchedulerSettings(name="cosin")


def test_a_scheduler_state_resumes_where_it_stopped():
    settings = SchedulerSettings(name="cosine", warmup_steps=2)
    first = build_scheduler(settings, torch.optim.SGD(params(), lr=1.0), total_steps=8)
    expected = lrs(first, 8)
    again = build_scheduler(settings, torch.optim.SGD(params(), lr=1.0), total_steps=8)
    lrs(again, 3)
    state = again.state_dict()
    resumed = build_scheduler(settings, torch.optim.SGD(params(), lr=1.0), total_steps=8)
    resumed.load_state_dict(state)
    resumed.optimizer.param_groups[0]["lr"] = resumed.get_last_lr()[0]
    assert lrs(resumed, 5) == expected[3:]


@pytest.mark.parametrize(("key", "value", "hint"), [
    ("lr", 3e-5, "key 'lr' moved: write optimizer: {lr: 3e-05} (--set optimizer.lr=3e-05)"),
    ("weight_decay", 0.01, "key 'weight_decay' moved: write optimizer: {weight_decay: 0.01} "
     "(--set optimizer.weight_decay=0.01)"),
    ("warmup_ratio", 0.1, "key 'warmup_ratio' moved: write scheduler: {warmup_ratio: 0.1} "
     "(--set scheduler.warmup_ratio=0.1)"),
])
def test_old_keys_are_refused_with_the_new_form(key, value, hint):
    with pytest.raises(ValueError) as caught:
        refuse_moved_keys({"program": "multiexit_glue", key: value})
    assert str(caught.value) == hint
    assert refuse_moved_keys({"optimizer": {"lr": value}}) == {"optimizer": {"lr": value}}
