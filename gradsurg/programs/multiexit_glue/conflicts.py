"""`gradsurg conflicts` for multi-exit GLUE recipes: the recipe's first steps, trained in memory
with its loss split into groups whose per-block cosines the combiner `blockwise(sum)` logs.

Which groups: a recipe with `exit_groups` keeps them; `romebert` and `romebert_sd` (final task
loss + self-distillation) get one group per exit with each early exit's share of the SD loss
(`exit_groups: sd`), whose sum is the recipe's own loss; another one-stage recipe with two or
more `loss_groups` keeps those. The rest have no per-group form of their loss (`pabee`'s and
`elbert`'s one weighted group, whose per-exit split would train another loss; DeeBERT's stages,
one group each) and are refused before anything is loaded. The update is the groups' sum:
`blockwise(sum)` combines each block by `sum`, so the map shows the conflicts the recipe's
combiner (not applied while measuring) would find to act on.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gradsurg.errors import ConfigError
from gradsurg.loggers import MemoryLog
from gradsurg.programs import MeasuredSteps
from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.modes import MODES
from gradsurg.programs.training import stage_steps

#: The measuring combiner: each parameter block summed (the update is the plain sum), every
#: pair of groups reaching a block logged (`cosine/<block>/<a>/<b>`, `conflict/...`).
MEASURING_COMBINER: dict[str, Any] = {"name": "blockwise", "inner": "sum"}


def per_group_recipe(config: MultiExitGlueConfig) -> tuple[MultiExitGlueConfig, str]:
    """The recipe as the measurement trains it, and in words what that is; a ConfigError
    where the recipe has no form with two or more loss groups."""
    mode = config.mode_spec
    changes: dict[str, Any] = {"combiner": MEASURING_COMBINER, "weighting": None,
                               "conflict_blocks": None,  # blockwise logs the same keys
                               "log_every": 1, "checkpoints": False, "save_model": False}
    if config.exit_groups is not None:
        groups = f"per-exit loss groups (the recipe's exit_groups: {config.exit_groups})"
    elif mode.per_exit_groups and config.loss_groups is None:
        changes["exit_groups"] = "sd"
        groups = ("per-exit loss groups (exit_groups: sd: the final exit's task loss and each "
                  "early exit's share of the SD loss, which sum to the recipe's loss)")
    elif not mode.one_stage:
        raise ConfigError(
            f"conflicts: mode {mode.name} trains one loss group per stage, so no two groups' "
            "gradients ever meet; the map needs a one-stage recipe with two or more loss "
            f"groups ({_measurable_modes()}, or loss_groups)")
    elif len(config.joint_groups()) < 2:
        (group,) = config.joint_groups()
        raise ConfigError(
            f"conflicts: mode {mode.name} trains the single loss group {group!r}, which has no "
            "per-group form (splitting it per exit would train another loss); the map needs "
            f"two or more groups: use {_measurable_modes()}, or split the loss with "
            "loss_groups")
    else:
        groups = f"the recipe's loss groups ({', '.join(config.joint_groups())})"
    try:
        measured = MultiExitGlueConfig.model_validate(
            {**config.model_dump(mode="json"), **changes})
    except ValidationError as error:  # the recipe validated; its per-group form may not
        raise ConfigError(f"conflicts: the recipe's per-group form is invalid: "
                          f"{error.errors()[0]['msg']}") from None
    left_out = []
    if config.combiner_spec() != "sum":
        left_out.append(f"combiner {_spec_name(config.combiner_spec())}")
    if config.weighting is not None:
        left_out.append(f"weighting {_spec_name(config.weighting)}")
    trained_as = f"{groups}, summed (combiner blockwise(sum), which logs each block's cosines)"
    if left_out:
        trained_as += (f"; the recipe's {' and its '.join(left_out)} "
                       f"{'is' if len(left_out) == 1 else 'are'} not applied while measuring: "
                       "these are the conflicts the plain sum leaves to act on")
    return measured, trained_as


def measure_conflicts(config: MultiExitGlueConfig, steps: int) -> MeasuredSteps:
    """The recipe's first `steps` optimizer steps (its LR schedule unchanged), in memory, as
    `per_group_recipe` makes it: one record per step. Nothing is written: no run folder, no
    checkpoint, no model. More steps than the recipe trains is a ConfigError before the
    first step."""
    from gradsurg.programs.multiexit_glue.recipe import MultiExitGlueRecipe

    measured, trained_as = per_group_recipe(config)
    log = MemoryLog()
    recipe = MultiExitGlueRecipe(measured, None, log=log)
    recipe.setup()
    # blockwise(sum) takes one batch per step, so an epoch has one step per batch
    total = stage_steps(recipe.batches_per_epoch, measured.epochs)
    if steps > total:
        raise ConfigError(f"--steps {steps}: the recipe trains {total} optimizer steps "
                          f"({recipe.batches_per_epoch} per epoch, epochs {measured.epochs:g}); "
                          f"measure at most {total}")
    recipe.train(stop_after=steps)
    (stage,) = recipe.stages
    return MeasuredSteps(records=log.records, groups=list(stage.groups), trained_as=trained_as)


def _measurable_modes() -> str:
    return ", ".join(name for name, mode in MODES.items() if mode.per_exit_groups)


def _spec_name(spec: Any) -> str:
    return str(spec.get("name") if isinstance(spec, dict) else spec)
