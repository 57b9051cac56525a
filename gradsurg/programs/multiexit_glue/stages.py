"""What each stage of a multi-exit GLUE run trains: its loss groups and its parameters.

A stage's groups are `LossGroup`s (the concept README teaches for one's own loop) whose part
is a registered loss term over all exits' logits. The terms and the weighting are the run's
training parts (`TrainingParts`), never part of the model: they go to the optimizer, the
Surgery (which trains, clips and all-reduces a learned term with the model) and the
checkpoint explicitly, so the model is saved for inference as it is.
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
from gradsurg.programs.multiexit_glue.modes import TermSpec, TrainingStage
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


class TrainingParts(torch.nn.Module):
    """What trains with the model but is not part of it: `loss_terms[stage][group]` and the
    recipe's `loss_weighting` (if any). Its state keys (`loss_terms.*`, `loss_weighting.*`)
    are the ones checkpoints have always held next to the model's."""

    def __init__(self, groups: StageGroups, weighting: LossWeighting | None) -> None:
        super().__init__()
        self.loss_terms = torch.nn.ModuleDict({
            stage: torch.nn.ModuleDict({name: _term(group) for name, group in by_name.items()})
            for stage, by_name in groups.items()})
        self.loss_weighting = weighting


def build_loss_groups(num_exits: int, stages: Sequence[TrainingStage], config: MultiExitGlueConfig
                      ) -> StageGroups:
    """Every stage's loss groups (their terms become `TrainingParts.loss_terms`)."""
    return {stage.name: {group: build_group(group, spec, num_exits, config)
                         for group, spec in stage.groups.items()} for stage in stages}


def _term(group: LossGroup) -> torch.nn.Module:
    (term,) = group.parts.values()  # build_group gives each group one term
    assert isinstance(term, torch.nn.Module)
    return term


def learned_facts(groups: StageGroups) -> dict[str, float]:
    """What the terms learned (e.g. ELBERT's exit weights), keyed `stage/group/fact`."""
    return {f"{stage}/{name}/{key}": round(value, 6)
            for stage, by_name in groups.items() for name, group in by_name.items()
            for key, value in _term(group).describe().items()}


def build_weighting(stages: Sequence[TrainingStage], config: MultiExitGlueConfig
                    ) -> LossWeighting | None:
    """The recipe's loss weighting over the (single) stage's groups: learned weights are
    trained by the same optimizer, its state goes into the checkpoints (`TrainingParts`)."""
    if config.weighting is None:
        return None
    (stage,) = stages  # validation allows weightings on one-stage modes only
    return WEIGHTINGS.build(config.weighting, list(stage.groups), where="key 'weighting'")


def check_combiner_groups(combiner: Combiner, stages: Sequence[TrainingStage]) -> None:
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


def set_trainable(model: MultiExitModel, parts: TrainingParts, stage: TrainingStage
                  ) -> list[torch.nn.Parameter]:
    """Freeze what the stage does not train; the parameters it does (the model's, then its
    loss terms' and the weighting's)."""
    model.encoder.requires_grad_(stage.train_encoder)
    for name, terms in parts.loss_terms.items():
        terms.requires_grad_(name == stage.name)
    last = model.num_exits - 1
    for index, exit_head in enumerate(model.exits):
        wanted = (
            stage.trained_exits == "all"
            or (stage.trained_exits == "final" and index == last)
            or (stage.trained_exits == "early" and index < last)
        )
        exit_head.requires_grad_(wanted)
    return [p for module in (model, parts) for p in module.parameters() if p.requires_grad]


def with_parts(model: torch.nn.Module, parts: TrainingParts) -> torch.nn.Module:
    """A module holding the model's children and the training parts side by side (neither
    changed): its state dict is the model's plus `loss_terms.*` / `loss_weighting.*`, the
    keys a checkpoint's model.safetensors holds, so checkpoints save and resume both."""
    view = torch.nn.Module()
    for name, p in model.named_parameters(recurse=False):
        view.register_parameter(name, p)
    for name, b in model.named_buffers(recurse=False):
        view.register_buffer(name, b, persistent=name not in model._non_persistent_buffers_set)
    for module in (model, parts):
        for name, child in module.named_children():
            if child is not None:
                view.add_module(name, child)
    return view
