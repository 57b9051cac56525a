"""`trimmed_mean`: the coordinate-wise trimmed mean (Yin et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradsurg.combiners.base import COMBINERS, Combined, Combiner, require
from gradsurg.errors import ConfigError


@COMBINERS.register
class TrimmedMean(Combiner):
    """Per coordinate, the b largest and b smallest entries dropped, the rest averaged; times k.

        g[c] = k / (k - 2b) * sum of the sorted column c without its b first and b last

    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates" (ICML 2018), the trimmed mean with b = `trim` (torchjd 0.18's
    `TrimmedMean(trim_number)`); it needs k >= 2b + 1 groups (checked when bound). b = 0 is
    `sum`. The output is k times the paper's mean, on `sum`'s scale. Per coordinate, not
    through the Gramian: the columns are sorted and summed in float64 chunks (float32 rows
    near the top of their range cannot overflow the sum). Cost: a sort of k numbers per
    coordinate, a float64 [k, chunk] buffer.
    """

    name = "trimmed_mean"
    exact_on_shards = True  # column by column: nothing crosses coordinates

    def __init__(self, *, trim: int = 1) -> None:
        require(not isinstance(trim, bool) and isinstance(trim, int) and trim >= 0, self.name,
                "trim", "an integer >= 0", trim)
        self.trim = trim

    def resolve(self, names: list[str]) -> None:
        if len(names) < 2 * self.trim + 1:
            raise ConfigError(f"combiner 'trimmed_mean': trim {self.trim} needs at least "
                              f"{2 * self.trim + 1} loss groups, got {names}")

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        k, n = matrix.shape
        kept = k - 2 * self.trim
        out = torch.empty(n, dtype=matrix.dtype, device=matrix.device)
        chunk = max(1, (1 << 22) // max(k, 1))
        for start in range(0, n, chunk):
            block = matrix[:, start : start + chunk].to(torch.float64)
            middle = block.sort(dim=0).values[self.trim : self.trim + kept]
            out[start : start + chunk] = (middle.sum(dim=0) * (k / kept)).to(matrix.dtype)
        return Combined(out, {"trimmed_mean/kept": float(kept)})
