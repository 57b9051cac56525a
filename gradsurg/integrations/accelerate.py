"""Accelerate: `backward(accelerator, surgery, losses)` in place of `accelerator.backward`.

    with accelerator.accumulate(model):
        losses = {"final": ..., "sd": ...}
        gradsurg.integrations.accelerate.backward(accelerator, surgery, losses)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)   # sees the combined gradient
        optimizer.step(); optimizer.zero_grad()

Like `accelerator.backward`, the losses are divided by the accumulation steps and, under fp16,
scaled by Accelerate's GradScaler (build the Surgery with `nonfinite="scaler"` then, so an
overflow reaches the scaler). The step's last micro-batch is the one Accelerate syncs on.
A `Surgery(..., weighting=...)` weighs the raw losses first (FAMO: pass `recompute`); call
`surgery.epoch_end()` after each epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.integrations.groups import as_loss_groups, refuse_multi_batch
from gradsurg.surgery import Surgery


def backward(accelerator: Any, surgery: Surgery, losses: Mapping[str, Tensor], *,
             recompute: Callable[[], Mapping[str, Tensor]] | None = None) -> None:
    """Backward the loss groups of one micro-batch as `accelerator.backward` would
    (`recompute`: this micro-batch's losses again, for a weighting such as FAMO)."""
    refuse_multi_batch(surgery.combiner, framework="gradsurg.integrations.accelerate.backward")
    groups = as_loss_groups(losses, where="the losses given to backward")
    factor = 1.0 / accelerator.gradient_accumulation_steps
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and surgery.nonfinite.rule != "scaler":
        raise ConfigError("Accelerate scales fp16 losses with a GradScaler: build the "
                          "Surgery with nonfinite='scaler' so an overflowing step reaches "
                          "the scaler instead of being dropped")

    def scale(loss: Tensor) -> Tensor:
        return scaler.scale(loss * factor) if scaler is not None else loss * factor

    surgery.backward(groups, last_micro_batch=bool(accelerator.sync_gradients), scale=scale,
                     recompute=recompute)
