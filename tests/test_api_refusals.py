"""The Python API: what used to end in a bare torch error, a KeyError or misleading
advice is one GradsurgError saying what to do, or works: a state dict of another combiner,
a manual accumulation loop, reentrant gradient checkpointing. (The GradScaler under the
default rule: test_nonfinite_rows.py; the Trainer extra's name: test_packaging.py.)"""

from __future__ import annotations

import pytest
import torch
from models import ALL_SPECS, ThreeGroupNet, poisonable_setup, three_group_batch
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradsurg import Surgery
from gradsurg.errors import GradsurgError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_state_dict_of_another_combiner_is_refused_by_name():
    names = sorted(ALL_SPECS)
    states = {name: poisonable_setup(name)[2].state_dict() for name in names}
    for saved in names:
        for name in names:
            if saved == name:
                continue
            surgery = poisonable_setup(name)[2]
            with pytest.raises(GradsurgError, match=f"saved by combiner '{saved}', cannot be "
                                                    f"loaded into combiner '{name}'"):
                surgery.load_state_dict(states[saved])


def test_a_state_dict_without_the_combiners_name_is_checked_by_its_keys():
    saved = poisonable_setup("gradvac")[2].state_dict()
    del saved["combiner_name"]  # as a checkpoint written before the name was recorded
    with pytest.raises(GradsurgError, match=r"does not fit combiner 'dbmtl' \(KeyError"):
        poisonable_setup("dbmtl")[2].load_state_dict(saved)
    for wrong in ({}, {"weights": 1}, [1, 2]):
        with pytest.raises(GradsurgError, match=r"not a Surgery\.state_dict"):
            poisonable_setup("pcgrad")[2].load_state_dict(wrong)
    same = poisonable_setup("gradvac")[2]
    same.load_state_dict(saved)  # the right combiner still loads an old state


def test_a_manual_accumulation_loop_is_told_to_set_accumulation_steps():
    model, _, surgery = poisonable_setup("pcgrad")
    for seed in (0, 1):  # two micro-batches, one optimizer step, accumulation_steps unset
        x, y = three_group_batch(seed)
        if seed == 1:
            with pytest.raises(GradsurgError, match=r"Pass accumulation_steps=N to Surgery.*"
                                                    r"zero_grad\(\) between them would drop"):
                surgery.backward(model.losses(x, y))
        else:
            surgery.backward(model.losses(x, y))


class Checkpointed(ThreeGroupNet):
    """ThreeGroupNet with its trunk under torch.utils.checkpoint (reentrant or not)."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6)
        self.reentrant = reentrant

    def losses(self, x, y, factor=None):
        h = checkpoint(self.trunk, self.embed(x), use_reentrant=self.reentrant)
        ce = nn.functional.cross_entropy
        return {"a": ce(self.a(h), y), "b": ce(self.b(h), (y + 1) % 3)}


def trained(reentrant: bool, combiner: str, **options) -> dict[str, torch.Tensor]:
    model = Checkpointed(reentrant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    surgery = Surgery(model, optimizer, combiner, **options)
    for seed in (0, 1):
        x, y = three_group_batch(seed)
        surgery.backward(model.losses(x, y))
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("combiner, options", [
    ("sum", {}), ("sum", {"include": ["trunk.*"]}), ("mean", {"include": ["trunk.*"]}),
])
def test_reentrant_checkpointing_works_where_one_backward_pass_does(combiner, options):
    reentrant, plain = trained(True, combiner, **options), trained(False, combiner, **options)
    for key, value in plain.items():
        torch.testing.assert_close(reentrant[key], value, rtol=0, atol=1e-7)


@pytest.mark.parametrize("combiner, options, message", [
    ("pcgrad", {"include": ["trunk.*"]}, "cannot give each loss group its own gradient"),
    ("upgrad", {}, "cannot give each loss group its own gradient"),
    ("sum", {"diagnostics_every": 1}, "cannot give each loss group its own gradient"),
    ("mean", {}, "pass include="),
])
def test_reentrant_checkpointing_is_refused_where_it_cannot_work(combiner, options, message):
    with pytest.raises(GradsurgError, match=f"reentrant gradient checkpointing.*{message}"):
        trained(True, combiner, **options)
