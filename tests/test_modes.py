"""The modes table of the multiexit_glue program: every row is one the program can train."""

from __future__ import annotations

from typing import get_args

import pytest

from gradsurg.combiners import COMBINERS
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.programs.multiexit_glue import MODES, MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.modes import Mode


def test_the_table_and_the_schema_name_the_same_modes():
    assert list(MODES) == list(get_args(Mode))
    assert all(name == mode.name for name, mode in MODES.items())


@pytest.mark.parametrize("name", list(MODES))
def test_every_stage_builds_its_loss_terms_and_the_default_combiner_fits(name):
    mode = MODES[name]
    for stage in mode.stages:
        assert stage.groups, stage
        for group, spec in stage.groups.items():
            LOSS_TERMS.build(spec, 3, where=f"{name}/{stage.name}/{group}")
    default = COMBINERS.build(mode.default_combiner, where="combiner").group_names()
    assert set(default) <= set(mode.stages[0].groups)
    assert len({stage.name for stage in mode.stages}) == len(mode.stages)


def test_two_stage_modes_train_disjoint_exits_and_freeze_the_encoder_second():
    for mode in (m for m in MODES.values() if not m.one_stage):
        first, second = mode.stages
        assert (first.trained_exits, second.trained_exits) == ("final", "early")
        assert first.train_encoder and not second.train_encoder


def test_recipe_groups_replace_a_one_stage_mode_s_groups_only():
    groups = {"a": "final_task", "b": "self_distillation"}
    (joint,) = MODES["pabee"].stages_with(groups)
    assert dict(joint.groups) == groups and joint.trained_exits == "all"
    assert MODES["pabee"].stages[0].groups == {"exits": "layer_weighted"}  # table unchanged
    with pytest.raises(ValueError, match="fixed loss groups"):
        MODES["deebert"].stages_with(groups)


@pytest.mark.parametrize(("mode", "loss_groups", "expected"), [
    ("romebert", None, {"name": "project", "target": "final", "reference": "sd"}),
    ("romebert", {"final": "final_task", "sd": "self_distillation", "x": "early_task_sum"},
     {"name": "project", "target": "final", "reference": "sd"}),
    ("romebert", {"a": "final_task", "b": "self_distillation"}, "sum"),
    ("romebert_sd", None, "sum"),
    ("deebert", None, "sum"),
    ("elbert", None, "sum"),
])
def test_default_combiner_applies_where_its_groups_exist(mode, loss_groups, expected):
    config = MultiExitGlueConfig(program="multiexit_glue", mode=mode, loss_groups=loss_groups)
    assert config.combiner_spec() == expected
