"""The ordered stages that turn one step's collected gradients into final `.grad` values.

    collected -> all-reduce -> unscale -> combine -> clip -> non-finite rule  => .grad

Each stage is a small object next to what it is about (`distributed.AllReduce`,
`precision.Unscale`, `combiners.stage.Combine`, `clipping.Clip`, `nonfinite.NonFiniteRule`) with
`run(step)`, an optional `finish(step)` that runs after every stage has (e.g. the loss scale
learns whether the step was skipped), its own diagnostics keys and its own state dict. A
`Pipeline` runs them in order; `Surgery` only wires a collector to a pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from gradsurg.params import FlatLayout


@dataclass
class StepGradients:
    """What one optimizer step collected, handed from stage to stage.

    `matrix` holds one row per loss group over `layout`'s parameters; it is None when the
    step took the one-backward shortcut of a fixed-weight combiner, in which case the selected
    parameters' `.grad` hold the plain sum of the rows and `shortcut_weight` says what to
    multiply it by. Parameters outside the layout always hold the plain sum in `.grad`.
    """

    names: tuple[str, ...]
    layout: FlatLayout
    matrix: Tensor | None
    trainable: list[nn.Parameter]
    outside: list[nn.Parameter]
    losses: dict[str, Tensor]
    bad_losses: dict[str, Tensor]
    shortcut_weight: float = 1.0
    #: Independent batches stacked in `matrix` (`names` `<group>@1`, ..., batch-major) for a
    #: combiner with `batches_per_step` > 1; 1 otherwise.
    batches: int = 1
    #: This step's number, counting from 1 (for messages).
    index: int = 0
    diagnostics: dict[str, float] = field(default_factory=dict)
    #: The 2-norm of every trainable gradient once clipped (set by `Clip` when it runs).
    total_norm: Tensor | None = None
    #: Groups whose gradient row holds NaN/inf (found by `Combine` before any combiner runs).
    bad_rows: list[str] = field(default_factory=list)
    skipped: bool = False

    def plain_parameters(self) -> list[nn.Parameter]:
        """Parameters whose `.grad` holds a plain sum (everything when there is no matrix)."""
        return self.outside if self.matrix is not None else self.trainable


class Stage:
    """A pipeline stage: `run` changes the step's gradients; `finish` sees the outcome."""

    def run(self, step: StepGradients) -> None:
        raise NotImplementedError

    def finish(self, step: StepGradients) -> None:
        del step

    def state_dict(self) -> dict[str, Any]:
        """Top-level keys of `Surgery.state_dict()` this stage owns (distinct per stage)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        del state


class Pipeline:
    """Runs its stages in order, then lets each finish; their states side by side."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)

    def run(self, step: StepGradients) -> None:
        for stage in self.stages:
            stage.run(step)
        for stage in self.stages:
            stage.finish(step)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for stage in self.stages:
            state.update(stage.state_dict())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for stage in self.stages:
            stage.load_state_dict(state)
