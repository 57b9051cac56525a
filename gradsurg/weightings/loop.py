"""A weighting inside `Surgery`: weigh each micro-batch, update once per optimizer step.

`WeightingStep` is the protocol every loop used to repeat by hand (weigh, keep the raw losses,
reduce them over the global batch, update after the step unless it was skipped, re-evaluate
the batch for FAMO); `Surgery(..., weighting=...)` owns one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.errors import ConfigError
from gradsurg.weightings.base import LossWeighting

#: Evaluates the micro-batch's losses again (FAMO's losses after the step).
Recompute = Callable[[], Mapping[str, Tensor]]


def global_losses(losses: Mapping[str, Tensor], weighting: LossWeighting, *,
                  share: float | None = None, parallel: DataParallel = SINGLE_PROCESS
                  ) -> Tensor:
    """The groups' losses over the global batch, float64 `[k]` in the weighting's group order.

    With several processes each rank's mean is weighted by its share of the rows and summed,
    so every rank gets the same vector and updates the weighting's state alike.
    """
    values = _local(losses, weighting, share, parallel)
    if parallel.enabled:
        parallel.all_reduce_(values)
    return values.cpu()


def _local(losses: Mapping[str, Tensor], weighting: LossWeighting, share: float | None,
           parallel: DataParallel) -> Tensor:
    values = torch.stack([losses[group].detach().reshape(()).to(torch.float64)
                          for group in weighting.groups])
    if parallel.enabled:
        values = values * (1 / parallel.world_size if share is None else share)
    return values


class WeightingStep:
    """One weighting's bookkeeping over a step's micro-batches.

    `weigh` per micro-batch (keeps the raw losses and the `recompute` callable); `close` once
    per step with the data parallelism (one all-reduce: the raw losses over the global batch,
    the mean over the micro-batches) and whether the pipeline skipped the step; `update` after
    the optimizer step: `step_end` for a step that was not skipped.
    """

    def __init__(self, weighting: LossWeighting) -> None:
        self.weighting = weighting
        #: The raw group losses of the last closed step over the global batch (logging).
        self.raw: dict[str, float] = {}
        self._sum: Tensor | None = None
        self._shares: list[tuple[Recompute | None, float | None]] = []
        self._due: Tensor | None = None  # the closed, not skipped step's raw losses
        self._parallel = SINGLE_PROCESS

    def weigh(self, losses: Mapping[str, Tensor], *, share: float | None,
              parallel: DataParallel, recompute: Recompute | None) -> dict[str, Tensor]:
        weighting = self.weighting
        if weighting.needs_losses_after_step and recompute is None:
            raise ConfigError(
                f"weighting {weighting.name!r} re-evaluates the step's batch after the update: "
                "pass surgery.backward(losses, recompute=lambda: <this batch's losses>)")
        values = _local(losses, weighting, share, parallel)
        if self._sum is None:  # a new step; a closed one never stepped (GradScaler) is gone
            self._shares, self._due = [], None
        self._sum = values if self._sum is None else self._sum + values
        self._shares.append((recompute, share))
        return weighting(losses)

    def close(self, parallel: DataParallel, *, skipped: bool) -> None:
        """The step's micro-batches are complete: reduce the raw losses once."""
        assert self._sum is not None, "close() follows weigh()"
        values = self._sum / len(self._shares)
        if parallel.enabled:
            parallel.all_reduce_(values)
        values = values.cpu()
        self.raw = dict(zip(self.weighting.groups, values.tolist()))
        self._due = None if skipped else values  # a skipped step updates nothing
        self._parallel = parallel
        self._sum = None

    def update(self) -> None:
        """After the optimizer step: the weighting's `step_end` (once per closed step)."""
        if self._due is None:
            return
        before, self._due = self._due, None
        shares, self._shares = self._shares, []
        after = None
        if self.weighting.needs_losses_after_step:
            parallel = self._parallel
            with torch.no_grad():
                total = sum(_local(recompute(), self.weighting, share, parallel)
                            for recompute, share in shares if recompute is not None)
            after = total / len(shares)
            if parallel.enabled:
                parallel.all_reduce_(after)
            after = after.cpu()
        self.weighting.step_end(before, after)

    def discard(self) -> None:
        self._sum, self._shares, self._due = None, [], None

    def logged(self) -> dict[str, float]:
        """`loss/<group>` (raw) and `weighting/<fact>`, as a training log line holds them."""
        values = {f"loss/{group}": value for group, value in self.raw.items()}
        values.update({f"weighting/{key}": value
                       for key, value in self.weighting.describe().items()})
        return values
