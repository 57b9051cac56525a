"""The modes of the `multiexit_glue` program as one table.

A mode is data, not code: its stages (each with the loss groups that drive it, group name ->
registered loss term, and which parts of the model it trains), its default combiner and
whether its exits share one module. The schema validates recipes against this table and the
program trains what it says; adding a mode is adding a row.

The rows (the RomeBERT paper's Table 1, then PABEE and ELBERT):
- romebert     one stage; groups `final` (last exit's task loss) and `sd` (self-distillation of
               the other exits); combiner `project`: final projected off sd on conflict (GR).
- romebert_sd  the same groups, combiner `sum` (the SD-only ablation).
- deebert      stage 1 trains backbone + final exit on the final loss; stage 2 freezes them
               and trains the other exits on the sum of their task losses.
- deebert_sd   stage 2 uses the SD loss instead (the paper's FastBERT stand-in).
- pabee        one stage, one group: the exits' losses averaged with weights ~ depth.
- elbert       one exit module shared by every layer; one group: the exits' losses under
               trainable weights (sigmoid, the final exit's weight M minus the others).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

#: A loss term as a recipe names it: a registered name or `{name: ..., **params}`.
TermSpec = str | dict[str, Any]
#: Which exit heads a stage trains: all, the final one only, or every one but the final.
TrainedExits = Literal["all", "final", "early"]
Mode = Literal["romebert", "romebert_sd", "deebert", "deebert_sd", "pabee", "elbert"]


@dataclass(frozen=True)
class TrainingStage:
    """One optimization stage: the loss groups (name -> loss term) that drive it, and which
    parts of the model it trains."""

    name: str
    groups: Mapping[str, TermSpec]
    train_encoder: bool = True
    trained_exits: TrainedExits = "all"


@dataclass(frozen=True)
class ModeSpec:
    """One row of the table: a mode's stages, default combiner and exit sharing."""

    name: str
    stages: tuple[TrainingStage, ...]
    #: Used when the recipe sets no combiner and the groups it names exist; else `sum`.
    default_combiner: TermSpec = "sum"
    #: One exit module after every layer (ELBERT) instead of one per layer.
    shared_exit: bool = False
    #: Accepts `exit_groups` (one loss group per exit in place of final + sd).
    per_exit_groups: bool = False

    @property
    def one_stage(self) -> bool:
        """One-stage modes train every part at once and take the recipe's loss groups."""
        return len(self.stages) == 1

    def stages_with(self, groups: Mapping[str, TermSpec] | None) -> tuple[TrainingStage, ...]:
        """The mode's stages, a one-stage mode's groups replaced by `groups` when given."""
        if groups is None:
            return self.stages
        if not self.one_stage:
            raise ValueError(f"mode {self.name}'s stages have fixed loss groups")
        return (dataclasses.replace(self.stages[0], groups=dict(groups)),)


_SD_GROUPS = {"final": "final_task", "sd": "self_distillation"}
_FINAL_ONLY = TrainingStage("stage1", {"final": "final_task"}, trained_exits="final")

MODES: dict[str, ModeSpec] = {mode.name: mode for mode in (
    ModeSpec("romebert", (TrainingStage("joint", _SD_GROUPS),), per_exit_groups=True,
             default_combiner={"name": "project", "target": "final", "reference": "sd"}),
    ModeSpec("romebert_sd", (TrainingStage("joint", _SD_GROUPS),), per_exit_groups=True),
    ModeSpec("deebert", (_FINAL_ONLY, TrainingStage("stage2", {"exits": "early_task_sum"},
                                                    train_encoder=False, trained_exits="early"))),
    ModeSpec("deebert_sd", (_FINAL_ONLY, TrainingStage(
        "stage2", {"sd": "self_distillation"}, train_encoder=False, trained_exits="early"))),
    ModeSpec("pabee", (TrainingStage("joint", {"exits": "layer_weighted"}),)),
    ModeSpec("elbert", (TrainingStage("joint", {"exits": "learned_exit_weights"}),),
             shared_exit=True),
)}

if set(MODES) != set(get_args(Mode)):  # the schema's Literal and the table must agree
    raise RuntimeError(f"modes table {sorted(MODES)} differs from Mode {get_args(Mode)}")
