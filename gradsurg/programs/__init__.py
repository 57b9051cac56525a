"""Training programs that recipes name (`program: multiexit_glue`), registered like combiners.

A program is a config schema (a pydantic model, so recipes are validated before anything runs)
and a function that runs it into an output folder. Installed packages add programs through the
`gradsurg.programs` entry-point group. Here: `training` (the ordinary loop around Surgery that
programs share) and `multiexit_glue/` (the built-in program, a recipe class in the torchtune
style). The YAML files that name programs are read by `gradsurg.recipes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gradsurg.registry import Registry


class ProgramConfig(BaseModel):
    """Base of every program's recipe schema: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    program: str = Field(description="registered program that runs the recipe (gradsurg plugins)")


@dataclass(frozen=True)
class MeasuredSteps:
    """What `Program.measure_conflicts` gives back: the records its training logged (one per
    step), the loss groups it measured and, in words, how it trained them."""

    records: list[dict[str, Any]]
    groups: list[str]
    trained_as: str


@dataclass(frozen=True)
class Program:
    """`run(config, output_dir)` trains and evaluates, writes its files, returns the results.

    `resumable` is declared, never guessed: a program that can continue a run from its
    checkpoints (`gradsurg run --resume`) says `resumable=True`, and its `run` then takes
    `resume=True` as a keyword; one that cannot says `resumable=False`, and `--resume` is
    refused before anything runs. The run folder's layout is `gradsurg.run_folder`'s.

    `measure_conflicts(config, steps)` (optional; `gradsurg conflicts`) trains the recipe's
    first `steps` optimizer steps in memory, writing no file, with its loss split into groups
    the combiner `blockwise` around `sum` logs per block, and returns the records; a recipe
    without two such groups is a ConfigError before the first step. None: the program cannot.
    """

    name: str
    config: type[ProgramConfig]
    run: Callable[..., dict[str, Any]]
    summary: str
    resumable: bool = field(kw_only=True)
    #: Recipe keys that change evaluation only: `run --resume` accepts new values for them,
    #: so a finished run's last checkpoint can be evaluated again without training.
    evaluation_keys: frozenset[str] = frozenset()
    measure_conflicts: Callable[[Any, int], MeasuredSteps] | None = field(default=None,
                                                                          kw_only=True)


PROGRAMS: Registry[Program] = Registry("program", "gradsurg.programs")
