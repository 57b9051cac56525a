"""The non-finite rule: what a NaN/inf loss or gradient does to an optimizer step.

A step is bad when a group's loss, a group's gradient row (checked by `Combine` before any
combiner runs, so every combiner is treated alike) or the final gradient holds a NaN or inf.

Like optax's `apply_if_finite`, it wraps nothing and decides after the gradients are final:
- `skip` (default): the step changes nothing (weights, weight decay, moments); `max_in_a_row`
  skips in a row stop the run (a diverged run should stop, not idle). The attached
  optimizer's gradients are made NaN, so a torch GradScaler the user drives skips the step and
  backs off, and the optimizer's own step drops them (None) before it runs; every other
  `.grad` is None.
- `raise`: stop at the first one.
- `scaler`: for a `torch.amp.GradScaler` the user drives: the step's `.grad` is made NaN so
  `scaler.step` skips it and backs its scale off (with `skip`, the scaler would find no
  gradient to check and fail).
- `ignore`: no check (saves one pass over the gradients).
Diagnostics: `nonfinite/skipped` (1 on a skipped step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from gradsurg.distributed import SINGLE_PROCESS, DataParallel
from gradsurg.engines import local
from gradsurg.errors import ConfigError, NonFiniteError
from gradsurg.pipeline import Stage, StepGradients

NonFinite = Literal["skip", "raise", "scaler", "ignore"]
NONFINITE_RULES = ("skip", "raise", "scaler", "ignore")


class NonFiniteRule(Stage):
    """Checks the step's losses and final gradient norm; skips, raises or marks bad steps."""

    def __init__(self, rule: NonFinite = "skip", *, max_in_a_row: int = 10,
                 extra_parameters: Sequence[nn.Parameter] = (),
                 data_parallel: DataParallel = SINGLE_PROCESS) -> None:
        if rule not in NONFINITE_RULES:
            raise ConfigError(f"nonfinite={rule!r} is unknown; allowed: "
                              f"{', '.join(NONFINITE_RULES)}")
        if max_in_a_row < 1:
            raise ConfigError(f"max_nonfinite_steps must be >= 1, got {max_in_a_row}")
        self.rule = rule
        self.max_in_a_row = max_in_a_row
        #: Parameters an optimizer holds beyond the model's (cleared on a skip too).
        self.extra_parameters = list(extra_parameters)
        self.skipped_steps = 0
        self.in_a_row = 0
        #: Steps applied with a gradient that is not all zeros (None: not known, e.g. a state
        #: saved before it was counted); a run where it stays 0 trained nothing.
        self.nonzero_steps: int | None = 0
        #: Under FSDP2 (`sharded`) the norm is of every rank's shards, so all ranks agree.
        self.data_parallel = data_parallel
        #: True while an attached optimizer's step runs a closure (set by `Surgery`).
        self.in_closure_step = False
        #: True when a skipped step's gradients were marked NaN for a GradScaler and await
        #: the attached optimizer's step, which drops them first (`before_optimizer_step`).
        self.marked = False

    def _drop(self, step: StepGradients) -> None:
        """A skipped step's gradients, so that no optimizer moves anything.

        Parameters an attached optimizer holds get NaN gradients, which a torch GradScaler
        driven by the user finds and skips (backing its scale off; with no gradient at all it
        would stop with "No inf checks were recorded"), and which that optimizer's own step
        drops before it runs (`before_optimizer_step`), so a plain `optimizer.step()` moves
        nothing either. Everything else, and everything inside a closure step (the optimizer
        reads the gradients within its own step), gets None, which torch's optimizers skip
        (weight decay and moments included)."""
        held = {id(p) for p in self.extra_parameters} if not self.in_closure_step else set()
        seen: set[int] = set()
        for p in [*step.trainable, *self.extra_parameters]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in held and p.grad is not None:
                local(p.grad).fill_(float("nan"))
                self.marked = True
            else:
                p.grad = None

    def before_optimizer_step(self, params: Sequence[Tensor]) -> None:
        """An attached optimizer is about to step: a skipped step's NaN marks are dropped."""
        if self.marked:
            for p in params:
                p.grad = None

    def run(self, step: StepGradients) -> None:
        self.marked = False
        if self.rule == "ignore":
            return
        norm = step.total_norm
        if norm is None:
            grads = [p.grad for p in step.trainable if p.grad is not None]
            norm = (self.data_parallel.norm(grads) if self.data_parallel.sharded
                    else total_norm([p for p in step.trainable if p.grad is not None]))
        bad = [name for name, flag in step.bad_losses.items() if bool(flag)]
        finite, nonzero = torch.stack([torch.isfinite(norm), norm > 0]).tolist()  # one sync
        step.skipped = bool(bad) or bool(step.bad_rows) or not finite
        if not step.skipped:
            self.in_a_row = 0
            if nonzero and self.nonzero_steps is not None:
                self.nonzero_steps += 1
            return
        cause = (f"loss group(s) {', '.join(bad)} not finite" if bad
                 else f"gradient of loss group(s) {', '.join(step.bad_rows)} not finite"
                 if step.bad_rows else "gradient not finite")
        if self.rule == "raise":
            raise NonFiniteError(f"optimizer step {step.index}: {cause}")
        self.skipped_steps += 1
        self.in_a_row += 1
        step.diagnostics["nonfinite/skipped"] = 1.0
        if self.rule == "scaler":
            for p in step.trainable:  # the scaler's inf check must find them
                if p.grad is not None:
                    local(p.grad).fill_(float("nan"))
            return
        self._drop(step)
        if self.in_a_row >= self.max_in_a_row:
            raise NonFiniteError(
                f"{self.in_a_row} optimizer steps in a row skipped (last: step "
                f"{step.index}, {cause}); stopping. Lower the learning rate or check the "
                "data")

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"skipped_steps": self.skipped_steps,
                                 "nonfinite_in_a_row": self.in_a_row}
        if self.nonzero_steps is not None:
            state["nonzero_steps"] = self.nonzero_steps
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.in_a_row = int(state.get("nonfinite_in_a_row", 0))
        nonzero = state.get("nonzero_steps")
        self.nonzero_steps = int(nonzero) if nonzero is not None else None


def total_norm(params: Sequence[nn.Parameter]) -> Tensor:
    """2-norm of all gradients together (inf or NaN if any entry is)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
