"""The clipping stage: the combined gradient of every trainable parameter, clipped together."""

from __future__ import annotations

import torch

from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.engines import local
from gradsurg.pipeline import Stage, StepGradients


class Clip(Stage):
    """Scales all gradients so their joint 2-norm is at most `max_norm`.

    Diagnostics: `grad_norm/total`, the norm before clipping. A non-finite norm turns the
    gradients into NaN, which the non-finite rule after it then skips.
    """

    def __init__(self, max_norm: float, data_parallel: DataParallel = SINGLE_PROCESS) -> None:
        self.max_norm = max_norm
        #: Under FSDP2 (`sharded`) the norm is of every rank's shards together.
        self.data_parallel = data_parallel

    def run(self, step: StepGradients) -> None:
        params = [p for p in step.trainable if p.grad is not None]
        if self.data_parallel.sharded:
            norm = self.data_parallel.norm([p.grad for p in params])
            # torch's rule: scale by max_norm / (norm + 1e-6) when that is below 1
            factor = torch.clamp(self.max_norm / (norm + 1e-6), max=1.0)
            for p in params:
                grad = local(p.grad)
                grad.mul_(factor.to(device=grad.device, dtype=grad.dtype))
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        step.total_norm = norm
        step.diagnostics["grad_norm/total"] = float(norm)
