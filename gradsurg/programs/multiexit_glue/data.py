"""The data side of a multi-exit GLUE run: splits, the seeded epoch order, the model's inputs.

The epoch order is a function of (seed, epoch) alone, so a run resumed mid-epoch sees exactly
the batches the uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from gradsurg.data.glue import TaskSpec, load_glue, load_glue_sample
from gradsurg.multiexit.model import MultiExitModel


def load_split(task: TaskSpec, split: str, *, data_dir: str | None, rows: int | None,
               shuffle_seed: int | None) -> Any:
    """One split; `rows` with a seed takes a seeded random subset (train), else the first rows."""
    if shuffle_seed is None or rows is None:
        return load_glue(task, split, data_dir=data_dir, max_rows=rows)
    return load_glue_sample(task, split, rows=rows, seed=shuffle_seed, data_dir=data_dir)


def epoch_order(size: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The training batches of one epoch as row indices: a function of (seed, epoch) only,
    so a resumed run can start at any batch and see what the uninterrupted run saw."""
    generator = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, size, batch_size)]



def forward(model: MultiExitModel, batch: Mapping[str, Tensor]) -> list[Tensor]:
    """Every exit's logits for a collated batch."""
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
