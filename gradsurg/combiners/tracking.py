"""Per-group running averages of gradient rows, kept by group name (DB-MTL, MoCo)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class TrackedRows:
    """An exponential moving average of each group's gradient row.

        rows_i <- rows_i + rate * (g_i - rows_i)

    A group seen for the first time starts from 0 (`start="zero"`) or from its first gradient
    (`start="first"`). Rows live in the matrix's dtype and device (k x n extra memory); the
    state holds them on the CPU with the names, so a checkpoint loads with weights_only.
    """

    def __init__(self, *, rate: float, start: str) -> None:
        self.rate = rate
        self.start = start
        self.names: list[str] = []
        self.rows: Tensor | None = None

    def update(self, matrix: Tensor, names: Sequence[str]) -> Tensor:
        """Fold this step's rows in and return the averages, ordered as `names`."""
        names = list(names)
        if self.rows is not None and self.rows.shape[1] != matrix.shape[1]:
            raise ValueError(
                f"tracked gradient rows have {self.rows.shape[1]} entries, the matrix "
                f"{matrix.shape[1]}: the selected parameters changed"
            )
        rows = self.rows
        if (rows is not None and names == self.names and rows.dtype == matrix.dtype
                and rows.device == matrix.device):
            return rows.lerp_(matrix, self.rate)  # in place: no k x n temporary
        old = {name: i for i, name in enumerate(self.names)}
        previous = self.rows.to(device=matrix.device, dtype=matrix.dtype) if (
            self.rows is not None) else None
        rows = torch.empty_like(matrix)
        for i, name in enumerate(names):
            if previous is not None and name in old:
                rows[i] = previous[old[name]].lerp(matrix[i], self.rate)
            elif self.start == "first":
                rows[i] = matrix[i]
            else:
                rows[i] = self.rate * matrix[i]
        self.names, self.rows = names, rows
        return rows

    def state_dict(self) -> dict[str, Any]:
        rows = None if self.rows is None else self.rows.detach().cpu().clone()
        return {"names": list(self.names), "rows": rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [str(name) for name in state["names"]]
        rows = state["rows"]
        if rows is not None and (rows.dim() != 2 or rows.shape[0] != len(names)):
            raise ValueError(f"tracked rows of shape {tuple(rows.shape)} for {len(names)} groups")
        self.names, self.rows = names, None if rows is None else rows.clone()
