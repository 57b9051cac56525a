"""The recipe keys `optimizer:` and `scheduler:`: what steps the weights and how its LR moves.

`optimizer: {name: adamw, lr: 2e-5, weight_decay: 0.01, betas: [0.9, 0.98]}` names any
`torch.optim` optimizer by its lower-case class name (case-insensitively), or one an installed
package registers in the `gradsurg.optimizers` entry-point group; every other key goes to its
constructor. `scheduler: {name: linear, warmup_ratio: 0.1}` is a warm-up from 0 followed by a
linear decay to 0, a half-cosine to 0, or a constant LR, over each stage's steps.

Both are checked when the recipe is read: the optimizer is built against a dummy parameter and
takes one step, so a misspelt option or an optimizer the training loop cannot drive (one that
needs a closure or sparse gradients) fails before the model loads, not at step 1. The
schedules are plain `LambdaLR`s, so the core needs no `transformers`; `linear` computes
exactly what `transformers.get_linear_schedule_with_warmup` computes.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from gradsurg.errors import ConfigError
from gradsurg.registry import Registry

OPTIMIZERS: Registry[Callable[..., Optimizer]] = Registry("optimizer", "gradsurg.optimizers")
"""Optimizer name -> factory `(params, **options) -> torch.optim.Optimizer`."""

for _name, _cls in vars(torch.optim).items():
    if isinstance(_cls, type) and issubclass(_cls, Optimizer) and _cls is not Optimizer:
        OPTIMIZERS.add(_name.lower(), _cls)

#: Where a recipe's optimizer problems are reported.
WHERE = "key 'optimizer'"

#: Keys that moved into `optimizer:` / `scheduler:`, refused with a hint to the new form.
MOVED_KEYS = {"lr": "optimizer", "weight_decay": "optimizer", "warmup_ratio": "scheduler"}


class OptimizerSettings(BaseModel):
    """A recipe's `optimizer:`; keys beyond these go to the optimizer's constructor."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field("adamw", min_length=1, description="a torch.optim optimizer by name, "
                      "any case (adamw, adam, sgd, rmsprop, adagrad, ...), or one a package "
                      "registers (gradsurg plugins)")
    lr: float = Field(2e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (decoupled for adamw); "
                                "0: none")
    _factory: Any = PrivateAttr(None)  # the registry's entry, looked up once (`factory`)

    @model_validator(mode="before")
    @classmethod
    def _from_recipe(cls, value: Any) -> Any:
        """`optimizer: sgd` is `{name: sgd}`; `eps: 1e-8` (a string to YAML 1.1, which wants
        `1.0e-8`) is the number it looks like, since only `lr` and `weight_decay` are typed."""
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, Mapping):
            return {key: _number_if_written_as_one(item) for key, item in value.items()}
        return value

    @field_validator("name")
    @classmethod
    def _known_name(cls, value: str) -> str:
        """`AdamW` -> `adamw`; an unknown name lists the allowed ones."""
        if value not in OPTIMIZERS and value.lower() in OPTIMIZERS:
            return value.lower()
        if value not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; allowed: "
                             f"{', '.join(OPTIMIZERS.names())}")
        return value

    def factory(self) -> Callable[..., Optimizer]:
        """The optimizer `name` registers, looked up on first use and kept: the recipe check
        and every stage's optimizer are built from it."""
        if self._factory is None:
            self._factory = OPTIMIZERS.lookup(self.name, where=WHERE)
        factory: Callable[..., Optimizer] = self._factory
        return factory

    def options(self) -> dict[str, Any]:
        """Constructor options: `lr`, the extra keys, and `weight_decay` unless it is 0 for an
        optimizer without that option (e.g. rprop), where 0 means what leaving it out means."""
        options: dict[str, Any] = {"lr": self.lr, **(self.model_extra or {})}
        if self.weight_decay != 0 or _accepts(self.factory(), "weight_decay"):
            options["weight_decay"] = self.weight_decay
        return options


class SchedulerSettings(BaseModel):
    """A recipe's `scheduler:`: the LR of each step as a share of `optimizer.lr`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="after the warm-up: linear decay to 0, half-cosine to 0, or "
        "constant")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of each stage's steps "
                                "warming up linearly from 0")
    warmup_steps: int | None = Field(None, ge=0, description="warm-up in optimizer steps "
                                     "instead of warmup_ratio")

    @model_validator(mode="after")
    def _one_warmup(self) -> SchedulerSettings:
        if self.warmup_steps is not None and self.warmup_ratio > 0:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        return self

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_ratio * total_steps)


def refuse_moved_keys(recipe: Any) -> Any:
    """A before-validator for program schemas: `lr: 2e-5` -> a one-line hint to the new form."""
    if isinstance(recipe, Mapping):
        for key, home in MOVED_KEYS.items():
            if key in recipe:
                value = recipe[key]
                raise ValueError(f"key {key!r} moved: write {home}: {{{key}: {value}}} "
                                 f"(--set {home}.{key}={value})")
    return recipe


def build_optimizer(settings: OptimizerSettings,
                    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]]) -> Optimizer:
    """The recipe's optimizer over `params`; bad options are one ConfigError naming the key.
    An optimizer that does not hold every parameter it was given (a factory that builds its
    own) is refused: the parameters it leaves out would never train."""
    params = list(params)
    given = [p for item in params
             for p in (item["params"] if isinstance(item, Mapping) else [item])]
    optimizer = OPTIMIZERS.call(settings.factory(), settings.name, settings.options(), params,
                                where=WHERE)
    held = {id(p) for group in getattr(optimizer, "param_groups", [])
            for p in group["params"]}
    missing = [p for p in given if id(p) not in held]
    if missing:
        raise ConfigError(
            f"{WHERE} (optimizer {settings.name!r}): holds {len(given) - len(missing)} of the "
            f"{len(given)} parameter tensors it was given, so the others would never train; "
            "its factory must build the optimizer over the params it receives")
    return optimizer


def check_optimizer(settings: OptimizerSettings) -> None:
    """Build the optimizer on a dummy 2x2 CPU weight and a length-2 bias and take one step, so
    every problem the run would meet at its first step is reported when the recipe is read
    (CPU: validation must not claim a GPU; `capturable`, for CUDA graphs the loop does not use,
    is refused; `muon`, which steps matrices only, cannot train a model's biases)."""
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    bias = torch.nn.Parameter(torch.zeros(2))
    build_optimizer(settings, [weight])  # an unknown or misspelt option, named by the registry
    try:
        optimizer = settings.factory()([weight, bias], **settings.options())
        for parameter in (weight, bias):
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
    except (TypeError, ValueError, RuntimeError, AssertionError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(f"{WHERE} (optimizer {settings.name!r}): cannot take a training "
                          f"step on a weight matrix and a bias vector: "
                          f"{type(error).__name__}: {detail}") from None


def buildable_optimizer(settings: OptimizerSettings) -> OptimizerSettings:
    """`settings` unchanged if `check_optimizer` passes; for a program schema's validator,
    where pydantic reports the problem as a ValueError."""
    try:
        check_optimizer(settings)
    except ConfigError as error:
        raise ValueError(str(error)) from None
    return settings


def build_scheduler(settings: SchedulerSettings, optimizer: Optimizer, *,
                    total_steps: int) -> LambdaLR:
    """The recipe's LR schedule over a stage of `total_steps` optimizer steps. A warm-up
    longer than the stage is refused: the whole stage would train at a sliver of the LR."""
    warmup = settings.warmup(total_steps)
    if warmup > total_steps:
        raise ConfigError(
            f"key 'scheduler.warmup_steps': a warm-up of {warmup} steps is longer than the "
            f"stage's {total_steps} optimizer steps, so the whole stage would train at no more "
            f"than {total_steps / warmup:.2g} of optimizer.lr; use at most {total_steps} "
            "(or warmup_ratio)")
    shape = partial(lr_factor, name=settings.name, warmup=settings.warmup(total_steps),
                    total=total_steps)
    return LambdaLR(optimizer, shape)


def lr_factor(step: int, *, name: str, warmup: int, total: int) -> float:
    """The LR at `step` as a share of the peak: `step / warmup` while warming up, then
    linear `(total - step) / (total - warmup)`, cosine `(1 + cos(pi p)) / 2` with
    `p = (step - warmup) / (total - warmup)`, or 1; never below 0."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


#: What YAML 1.1 reads as a string but every reader means as a number: an exponent without a
#: dot or without a sign (`1e-8`, `1.0e5`).
_SCIENTIFIC = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+")


def _number_if_written_as_one(value: Any) -> Any:
    if isinstance(value, list):
        return [_number_if_written_as_one(item) for item in value]
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value} is not allowed; allowed: a finite number")
        return number
    return value


def _accepts(factory: Callable[..., Any], option: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return True  # no signature to read: let the constructor decide
    return option in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
