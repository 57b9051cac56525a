"""Recipe configs of the multi-exit GLUE program for the tests: a 3-layer random BERT
(`tiny_bert_dir`) on a few real GLUE rows."""

from __future__ import annotations

from gradsurg.programs.multiexit_glue.config import MultiExitGlueConfig


def tiny_glue_config(tiny_bert_dir, shared_glue_dir, **overrides) -> MultiExitGlueConfig:
    """One epoch of 4 steps on 32 real rows, evaluated on 24: the program end to end."""
    values = dict(program="multiexit_glue", model=str(tiny_bert_dir),
                  data_dir=str(shared_glue_dir), train_rows=32, eval_rows=24, batch_size=8,
                  eval_batch_size=16, epochs=1, max_length=32, optimizer={"lr": 1e-3}, log_every=2,
                  threads=2)
    values.update(overrides)
    return MultiExitGlueConfig(**values)


def short_glue_config(tiny_bert_dir, shared_glue_dir, **overrides) -> MultiExitGlueConfig:
    """Three epochs of 2 steps on 16 rows, nothing saved: long enough for a weighting's
    epoch-wise state (DWA moves in epoch 3), short enough to run per method."""
    values = dict(program="multiexit_glue", model=str(tiny_bert_dir),
                  data_dir=str(shared_glue_dir), train_rows=16, eval_rows=8, batch_size=8,
                  eval_batch_size=8, epochs=3, max_length=32, optimizer={"lr": 1e-3}, log_every=1,
                  threads=2, save_model=False, checkpoints=False)
    values.update(overrides)
    return MultiExitGlueConfig(**values)
