"""The `multiexit_glue` program: multi-exit encoders on GLUE (RomeBERT and its baselines).

`config` is the recipe schema, `checks` what must hold before the first step, `recipe` the
training program itself; `PROGRAM` is what the `gradsurg.programs` entry point registers.
"""

from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.recipe import PROGRAM, run

__all__ = ["PROGRAM", "MultiExitGlueConfig", "run"]
