"""GLUE data: task specs, TSV/hub loading, tokenization and per-batch padding."""

from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import (
    GLUE_TASKS,
    Example,
    TaskSpec,
    get_task,
    hub_to_glue_schema,
    load_glue,
    load_glue_sample,
    read_glue_tsv,
)

__all__ = [
    "GLUE_TASKS",
    "Example",
    "GlueCollator",
    "TaskSpec",
    "get_task",
    "hub_to_glue_schema",
    "load_glue",
    "load_glue_sample",
    "read_glue_tsv",
    "tokenize_dataset",
]
