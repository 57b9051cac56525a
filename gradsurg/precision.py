"""Mixed precision: autocast for the forward pass, dynamic loss scaling for fp16.

bf16 has float32's range, so it needs autocast only. fp16 overflows easily: losses are scaled up
before backward and the gradients scaled back *before combining* (a combiner must see true
gradients; most are not scale-invariant in what they report or clip). The scale lives in a
`torch.amp.GradScaler` (its factors, interval and checkpointable state); whether a step was bad
is decided by Surgery's non-finite rule, because the combined gradient, not `.grad`, is what must
be finite, so `LossScale` feeds that verdict back to the scaler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
from torch import Tensor

from gradsurg.engines import local
from gradsurg.errors import ConfigError
from gradsurg.pipeline import Stage, StepGradients

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("fp32", "bf16", "fp16")

__all__ = ["PRECISIONS", "LossScale", "Precision", "Unscale", "autocast_factory"]


def autocast_factory(precision: Precision, device: torch.device
                     ) -> Callable[[], AbstractContextManager[Any]]:
    """A context-manager factory for the forward pass (a no-op for fp32)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs a CUDA device (got {device}); "
                          "use bf16 on the CPU")
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


class LossScale:
    """Dynamic loss scaling for fp16 on a `GradScaler`, driven by Surgery's skip decisions.

    After `growth_interval` good steps in a row the scale grows by `growth_factor`; a skipped
    (non-finite) step multiplies it by `backoff_factor`, as GradScaler.update does.
    """

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler
        self.good_steps = 0

    @property
    def value(self) -> float:
        return float(self.scaler.get_scale())

    def scale(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss)

    def update(self, *, skipped: bool) -> None:
        scale = self.value
        if skipped:
            self.good_steps = 0
            self.scaler.update(scale * self.scaler.get_backoff_factor())
            return
        self.good_steps += 1
        if self.good_steps >= self.scaler.get_growth_interval():
            self.good_steps = 0
            self.scaler.update(scale * self.scaler.get_growth_factor())

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "good_steps": self.good_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state["scaler"])
        self.good_steps = int(state["good_steps"])


class Unscale(Stage):
    """Pipeline stage: divides the loss scale out of the matrix and the plain gradients before
    they are combined, and afterwards tells the scale whether the step was skipped.

    State: `loss_scale` (the scaler's state and its count of good steps).
    """

    def __init__(self, loss_scale: LossScale) -> None:
        self.loss_scale = loss_scale

    def run(self, step: StepGradients) -> None:
        inverse = 1.0 / self.loss_scale.value
        if step.matrix is not None:
            step.matrix.mul_(inverse)
        grads = [local(p.grad) for p in step.plain_parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, inverse)

    def finish(self, step: StepGradients) -> None:
        self.loss_scale.update(skipped=step.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"loss_scale": self.loss_scale.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "loss_scale" in state:
            self.loss_scale.load_state_dict(dict(state["loss_scale"]))
