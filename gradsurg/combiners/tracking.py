"""Per-group running averages of gradient rows, kept by group name (DB-MTL, MoCo)."""

from __future__ import annotations

from typing import Any

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
        self.fresh: list[int] = []  # rows of groups bound but not seen yet

    def bind(self, names: list[str]) -> None:
        """Re-key the averages to `names` (a combiner's new binding): groups already known
        keep theirs, new ones start at their next update."""
        if names == self.names:
            return
        if self.rows is not None:
            old = {name: i for i, name in enumerate(self.names)}
            rows = self.rows.new_zeros(len(names), self.rows.shape[1])
            for i, name in enumerate(names):
                if name in old:
                    rows[i] = self.rows[old[name]]
            self.rows = rows
            self.fresh = [i for i, name in enumerate(names) if name not in old]
        self.names = list(names)

    def update(self, matrix: Tensor) -> Tensor:
        """Fold this step's rows (ordered as the bound `names`) in and return the averages."""
        if self.rows is not None and self.rows.shape[1] != matrix.shape[1]:
            raise ValueError(
                f"tracked gradient rows have {self.rows.shape[1]} entries, the matrix "
                f"{matrix.shape[1]}: the selected parameters changed"
            )
        if self.rows is None:
            self.rows = matrix.clone() if self.start == "first" else self.rate * matrix
            return self.rows
        rows = self.rows.to(device=matrix.device, dtype=matrix.dtype)
        rows.lerp_(matrix, self.rate)  # in place: no k x n temporary
        for i in self.fresh:
            rows[i] = matrix[i] if self.start == "first" else self.rate * matrix[i]
        self.rows, self.fresh = rows, []
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
        self.fresh = []
