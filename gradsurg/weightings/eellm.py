"""EE-LLM's warm-up of the early exits' loss weights, over per-exit groups."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from gradsurg.errors import ConfigError
from gradsurg.weightings.base import WEIGHTINGS, LossWeighting, check_number, exit_numbers

STYLES = ("linear", "cosine")


@WEIGHTINGS.register
class EELLMWarmup(LossWeighting):
    """Chen, Pan, Li, Ding & Zhou, "EE-LLM: Large-Scale Training and Inference of Early-Exit
    Large Language Models with 3D Parallelism" (ICML 2024), the exit weights' warm-up: early
    exit i's loss weight moves from `init` to `weight` over `warmup_steps` optimizer steps,

        w_i(t) = init_i + f(min(t, T) / T) (weight_i - init_i),
        f(r) = r (linear)  or  (1 - cos(pi r)) / 2 (cosine)

    with t the steps taken so far (0 at the first step) and T = `warmup_steps` (0: the target
    weights from the start); the last exit's weight is 1 throughout, as in the authors' code
    (`--exit-layer-weight`, `--exit-layer-weight-init`, `--exit-layer-weight-warmup-iters`,
    `--exit-layer-weight-warmup-style`; their defaults 1, 0, 0, linear). `weight` and `init`
    are one number for every early exit or a `{exitN: number}` mapping over all of them;
    init above weight is a cool-down. The groups must be the per-exit groups exit1..exitL.
    Not normalized (the authors add the weighted early losses to the final loss). The step
    count advances on optimizer steps that were taken (the authors count iterations, skipped
    ones included). State (buffer): the steps taken.
    """

    name = "eellm_warmup"

    def __init__(self, groups: Sequence[str], *, weight: float | Mapping[str, float] = 1.0,
                 init: float | Mapping[str, float] = 0.0, warmup_steps: int = 0,
                 style: str = "linear") -> None:
        super().__init__(groups)
        self.exits = exit_numbers(self.groups, self.name)
        last = max(self.exits)
        self.early = [g for g, n in zip(self.groups, self.exits) if n != last]
        if style not in STYLES:
            raise ConfigError(f"weighting 'eellm_warmup': style={style!r} is invalid; "
                              f"allowed: {', '.join(STYLES)}")
        self.style = style
        self.warmup_steps = int(check_number(warmup_steps, name=self.name, key="warmup_steps",
                                             low=0, low_open=False, integer=True))
        self.register_buffer("target", self._per_group(weight, "weight"))
        self.register_buffer("start", self._per_group(init, "init"))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def _per_group(self, value: float | Mapping[str, float], key: str) -> Tensor:
        """The option as float64 weights per group, 1 for the last exit."""
        if isinstance(value, Mapping):
            if set(value) != set(self.early):
                raise ConfigError(f"weighting 'eellm_warmup': {key} must give a number for "
                                  f"each early exit {self.early}, got {sorted(value)}")
            values = {g: check_number(v, name=self.name, key=f"{key}.{g}", low=0,
                                      low_open=False) for g, v in value.items()}
        else:
            number = check_number(value, name=self.name, key=key, low=0, low_open=False)
            values = dict.fromkeys(self.early, number)
        return torch.tensor([values.get(g, 1.0) for g in self.groups], dtype=torch.float64)

    def progress(self) -> float:
        """f(min(t, T) / T): 0 at the first step, 1 from step T on."""
        if self.warmup_steps == 0:
            return 1.0
        ratio = min(int(self.steps), self.warmup_steps) / self.warmup_steps
        return ratio if self.style == "linear" else (1 - math.cos(math.pi * ratio)) / 2

    def current(self) -> Tensor:
        return self.start + self.progress() * (self.target - self.start)

    def weigh(self, losses: Tensor) -> Tensor:
        return self._applied(self.current().to(losses.device), losses)

    def step_end(self, losses: Tensor, after: Tensor | None = None) -> None:
        self.steps += 1
