"""A NaN/inf gradient row whose loss is finite is caught before any combiner runs, so
every combiner (the built-in ones and the plugin's) skips alike under every non-finite mode:
weights, optimizer moments and the combiner's own state untouched, the next good step as if
the bad one never happened, and an overflowing row under loss scaling backs the scale off."""

from __future__ import annotations

import pytest
import torch
from models import ALL_SPECS, poisonable_setup, step_losses, three_group_batch

from gradsurg import Surgery
from gradsurg.combiners import COMBINERS
from gradsurg.errors import NonFiniteError
from gradsurg.precision import LossScale

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = sorted(ALL_SPECS)

def same(a, b) -> bool:
    """Deep equality of (state) dicts, lists and tensors."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_every_registered_combiner_is_covered():
    assert set(ALL) == set(COMBINERS.names()) and "balanced_sum" in ALL  # plugin included
    assert len(ALL) == 28


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ALL)
def test_a_bad_row_with_a_finite_loss_is_skipped_by_every_combiner(name, poison):
    runs = []
    for bad in (False, True):
        model, optimizer, surgery = poisonable_setup(name)
        for seed, factor in ([(0, None), (99, poison), (1, None)] if bad
                             else [(0, None), (1, None)]):
            before = (optimizer.state_dict(), surgery.state_dict(),
                      {k: v.clone() for k, v in model.state_dict().items()})
            surgery.backward(step_losses(model, surgery, seed, factor))
            optimizer.step()
            optimizer.zero_grad()
            if factor is not None:  # nothing moved: weights, moments, the combiner's state
                assert surgery.diagnostics["nonfinite/skipped"] == 1.0
                assert surgery.skipped_steps == 1
                assert same(before[0], optimizer.state_dict())
                assert same(before[1]["combiner"], surgery.state_dict()["combiner"])
                assert same(before[2], model.state_dict())
        runs.append((model.state_dict(), surgery.state_dict()["combiner"]))
    # the good step after it is the one a run that never met the bad step takes
    assert same(runs[0][0], runs[1][0]) and same(runs[0][1], runs[1][1])


@pytest.mark.parametrize("name", ALL)
def test_raise_names_the_group_whose_row_is_bad(name):
    model, _, surgery = poisonable_setup(name, nonfinite="raise")
    with pytest.raises(NonFiniteError, match=r"step 1: (gradient of loss group\(s\) b(@2)?|"
                                             r"gradient) not finite"):
        surgery.backward(step_losses(model, surgery, 0, float("nan")))


@pytest.mark.parametrize("name", ALL)
def test_a_gradscaler_the_user_drives_skips_and_backs_off(name):
    model, optimizer, surgery = poisonable_setup(name, nonfinite="scaler")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.backward(step_losses(model, surgery, 0, float("inf"), scale=scaler.scale))
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 512.0
    assert same(before, model.state_dict())


@pytest.mark.parametrize("name", ALL)
def test_ignore_applies_nan_on_the_selected_parameters_for_every_combiner(name):
    model, _, surgery = poisonable_setup(name, nonfinite="ignore")
    surgery.backward(step_losses(model, surgery, 0, float("nan")))
    for p in model.trunk.parameters():  # what the plain sum gives, never a finite guess
        assert torch.isnan(p.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_a_row_that_overflows_only_when_scaled_backs_the_loss_scale_off(name):
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    model, optimizer, surgery = poisonable_setup(name, loss_scale=LossScale(scaler))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    surgery.backward(step_losses(model, surgery, 0, 1e36))  # ~1e35 unscaled; x 65536: inf
    optimizer.step()
    optimizer.zero_grad()
    assert surgery.skipped_steps == 1 and scaler.get_scale() == 2.0**15
    assert same(before, model.state_dict())
    surgery.backward(step_losses(model, surgery, 0))  # and the next step trains
    optimizer.step()
    assert surgery.skipped_steps == 1 and not same(before, model.state_dict())


@pytest.mark.parametrize("name", ["sum", "pcgrad", "upgrad"])
def test_a_gradscaler_under_the_default_rule_skips_and_backs_off(name):
    """The default `skip` with a torch GradScaler the user drives: the overflow reaches the
    scaler (no "No inf checks were recorded for this optimizer" hours into a run), and a
    plain `optimizer.step()` after a skipped step moves nothing either."""
    model, optimizer, surgery = poisonable_setup(name)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = three_group_batch(0)
    for factor, scale in ((float("inf"), 512.0), (float("nan"), 256.0)):
        losses = model.losses(x, y, factor)
        surgery.backward({k: scaler.scale(v) for k, v in losses.items()})
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        assert scaler.get_scale() == scale and surgery.skipped_steps == (2 if scale == 256 else 1)
    assert same(before, model.state_dict()) and optimizer.state_dict()["state"] == {}
    surgery.backward(model.losses(x, y, float("nan")))  # no scaler: the plain step
    optimizer.step()
    assert same(before, model.state_dict()) and optimizer.state_dict()["state"] == {}
    surgery.backward({k: scaler.scale(v) for k, v in model.losses(x, y).items()})
    scaler.step(optimizer)  # and a good step trains
    assert not same(before, model.state_dict())


def test_a_closure_optimizer_sees_no_nan_on_a_skipped_step():
    model, _, _ = poisonable_setup("pcgrad")
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    surgery = Surgery(model, optimizer, "pcgrad", include=["trunk.*"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = three_group_batch(0)

    def closure():
        optimizer.zero_grad()
        losses = model.losses(x, y, float("nan"))
        surgery.backward(losses)
        return sum(losses.values()).detach()

    optimizer.step(closure)
    assert same(before, model.state_dict())
