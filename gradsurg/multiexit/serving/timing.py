"""Wall-clock time of the early-exit runner alone, as serving reports it.

Timings cover the model only (tokenization and batching are the same with or without early
exit) and synchronize an accelerator before reading the clock, since its kernels run
asynchronously.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import Tensor

from gradsurg.multiexit.exit_loop import EarlyExitOutput, EarlyExitRunner

__all__ = ["RunnerTimer"]


class RunnerTimer:
    """Seconds spent inside the runner, synchronizing accelerators around each call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0

    def run(self, runner: EarlyExitRunner, batch: Mapping[str, Tensor]) -> EarlyExitOutput:
        self._sync()
        start = time.perf_counter()
        out = runner(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        self._sync()
        self.seconds += time.perf_counter() - start
        return out

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
