"""What a training loop does with a weighting after each optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.weightings.base import LossWeighting


def global_losses(losses: Mapping[str, Tensor], weighting: LossWeighting, *,
                  share: float | None = None, parallel: DataParallel = SINGLE_PROCESS
                  ) -> Tensor:
    """The groups' losses over the global batch, float64 `[k]` in the weighting's group order.

    With several processes each rank's mean is weighted by its share of the rows and summed,
    so every rank gets the same vector and updates the weighting's state alike.
    """
    values = torch.stack([losses[group].detach().reshape(()).to(torch.float64)
                          for group in weighting.groups])
    if parallel.enabled:
        values = values * (1 / parallel.world_size if share is None else share)
        parallel.all_reduce_(values)
    return values.cpu()


def after_step(weighting: LossWeighting, losses: Mapping[str, Tensor], *,
               recompute: Callable[[], Mapping[str, Tensor]], skipped: bool,
               share: float | None = None, parallel: DataParallel = SINGLE_PROCESS
               ) -> dict[str, float]:
    """Run the weighting's step hook and return what to log: the raw group losses
    (`loss/<group>`) and the weights (`weighting/...`).

    `losses` are the raw losses the step was taken on; `recompute()` evaluates the same batch
    again, called (without gradients) only for weightings that need the losses after the
    step (FAMO). A skipped (non-finite) step updates nothing.
    """
    before = global_losses(losses, weighting, share=share, parallel=parallel)
    if not skipped:
        after = None
        if weighting.needs_losses_after_step:
            with torch.no_grad():
                after = global_losses(recompute(), weighting, share=share, parallel=parallel)
        weighting.step_end(before, after)
    logged = {f"loss/{group}": value for group, value in zip(weighting.groups, before.tolist())}
    logged.update({f"weighting/{key}": value for key, value in weighting.describe().items()})
    return logged
