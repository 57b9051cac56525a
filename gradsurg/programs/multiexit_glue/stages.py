"""What each stage of a multi-exit GLUE run trains: its loss groups and its parameters.

A stage's groups are `LossGroup`s (the concept README teaches for one's own loop) whose part
is a registered loss term over all exits' logits. The terms are attached to the model for the
run, so a term that learns (ELBERT's exit weights) is trained, clipped, all-reduced and
checkpointed with the model's own parameters; the program detaches them before the model is
evaluated and saved for inference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gradsurg import LossGroup
from gradsurg.combiners import Combiner
from gradsurg.errors import ConfigError
from gradsurg.multiexit.losses.terms import LOSS_TERMS
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.modes import Stage, TermSpec
from gradsurg.weightings import WEIGHTINGS, LossWeighting

#: Loss terms that take the recipe's `gamma` and `temperature` unless their spec sets them.
_SELF_DISTILLATION = ("self_distillation", "exit_self_distillation")

#: stage name -> group name -> the group.
StageGroups = dict[str, dict[str, LossGroup]]


def build_group(group: str, spec: TermSpec, num_exits: int, config: MultiExitGlueConfig
                ) -> LossGroup:
    """The loss group `group`: one registered loss term over all exits' logits."""
    name = str(spec.get("name") if isinstance(spec, Mapping) else spec)
    if name in _SELF_DISTILLATION:
        spec = {"gamma": config.gamma, "temperature": config.temperature,
                **({"name": spec} if isinstance(spec, str) else spec)}
    term = LOSS_TERMS.build(spec, num_exits, where=f"loss group {group!r}")
    return LossGroup(group, {name: term})


def attach_loss_groups(model: MultiExitModel, stages: Sequence[Stage],
                       config: MultiExitGlueConfig) -> StageGroups:
    """Every stage's loss groups; their terms go to `model.loss_terms[stage][group]`."""
    groups = {stage.name: {group: build_group(group, spec, model.num_exits, config)
                           for group, spec in stage.groups.items()} for stage in stages}
    terms = torch.nn.ModuleDict({
        stage: torch.nn.ModuleDict({name: _term(group) for name, group in by_name.items()})
        for stage, by_name in groups.items()})
    model.loss_terms = terms.to(next(model.parameters()).device)  # moved in place
    return groups


def _term(group: LossGroup) -> torch.nn.Module:
    (term,) = group.parts.values()  # build_group gives each group one term
    assert isinstance(term, torch.nn.Module)
    return term


def learned_facts(groups: StageGroups) -> dict[str, float]:
    """What the terms learned (e.g. ELBERT's exit weights), keyed `stage/group/fact`."""
    return {f"{stage}/{name}/{key}": round(value, 6)
            for stage, by_name in groups.items() for name, group in by_name.items()
            for key, value in _term(group).describe().items()}


def attach_weighting(model: MultiExitModel, stages: Sequence[Stage],
                     config: MultiExitGlueConfig) -> LossWeighting | None:
    """The recipe's loss weighting over the (single) stage's groups, attached to the model as
    `model.loss_weighting` like the loss terms: learned weights are trained by the same
    optimizer, and every weighting's state goes into the checkpoints with the weights."""
    if config.weighting is None:
        return None
    (stage,) = stages  # validation allows weightings on one-stage modes only
    weighting = WEIGHTINGS.build(config.weighting, list(stage.groups),
                                 where="key 'weighting'")
    model.loss_weighting = weighting.to(next(model.parameters()).device)
    return weighting


def detach_training_parts(model: MultiExitModel) -> None:
    """Remove the loss terms and the weighting: they are not part of the saved model."""
    del model.loss_terms
    if hasattr(model, "loss_weighting"):
        del model.loss_weighting


def check_combiner_groups(combiner: Combiner, stages: Sequence[Stage]) -> None:
    """Every group the combiner names exists in the stages it combines (per-exit groups are
    only known once the model's depth is), checked before any training."""
    for stage in stages:
        missing = [g for g in combiner.group_names() if g not in stage.groups]
        if len(stage.groups) > 1 and missing:
            raise ConfigError(f"key 'combiner': loss group {missing[0]!r} does not exist in "
                              f"this model's stage {stage.name}; allowed: "
                              f"{', '.join(stage.groups)}")


def group_losses(logits: list[Tensor], labels: Tensor, groups: Mapping[str, LossGroup]
                 ) -> dict[str, Tensor]:
    """Each loss group's value on one batch."""
    return {name: group(logits, labels) for name, group in groups.items()}


def set_trainable(model: MultiExitModel, stage: Stage) -> list[torch.nn.Parameter]:
    """Freeze what the stage does not train; the parameters it does."""
    model.encoder.requires_grad_(stage.train_encoder)
    for name, terms in model.loss_terms.items():
        terms.requires_grad_(name == stage.name)
    last = model.num_exits - 1
    for index, exit_head in enumerate(model.exits):
        wanted = (
            stage.trained_exits == "all"
            or (stage.trained_exits == "final" and index == last)
            or (stage.trained_exits == "early" and index < last)
        )
        exit_head.requires_grad_(wanted)
    return [p for p in model.parameters() if p.requires_grad]
