"""The clipping stage: the combined gradient of every trainable parameter, clipped together."""

from __future__ import annotations

import torch

from gradsurg.pipeline import Stage, StepGradients


class Clip(Stage):
    """Scales all gradients so their joint 2-norm is at most `max_norm`.

    Diagnostics: `grad_norm/total`, the norm before clipping. A non-finite norm turns the
    gradients into NaN, which the non-finite rule after it then skips.
    """

    def __init__(self, max_norm: float) -> None:
        self.max_norm = max_norm

    def run(self, step: StepGradients) -> None:
        params = [p for p in step.trainable if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        step.total_norm = norm
        step.diagnostics["grad_norm/total"] = float(norm)
