"""The `multiexit_glue` program: multi-exit encoders on GLUE (RomeBERT and its baselines).

`modes` is the table of modes (stages, loss groups, default combiner), `config` the recipe
schema, `checks` what must hold before the first step, `stages` what each stage trains,
`data` the splits and epoch order, `evaluation` the metrics, sweeps and plots, `recipe` the
program itself (`MultiExitGlueRecipe`); `PROGRAM` is what the `gradsurg.programs` entry point
registers.
"""

from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig
from gradsurg.programs.multiexit_glue.modes import MODES, ModeSpec, TrainingStage
from gradsurg.programs.multiexit_glue.recipe import PROGRAM, MultiExitGlueRecipe, run

__all__ = ["MODES", "PROGRAM", "ModeSpec", "MultiExitGlueConfig", "MultiExitGlueRecipe",
           "TrainingStage", "run"]
