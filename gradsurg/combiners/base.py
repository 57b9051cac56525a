"""The combiner contract: a `[k, n]` matrix of group gradients in, one `[n]` gradient out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.errors import ConfigError


class Combined(NamedTuple):
    """A combiner's output: the gradient and per-step facts for logging (plain floats)."""

    gradient: Tensor
    info: dict[str, float]


class Combiner:
    """Turns the per-group gradient matrix into the gradient the optimizer steps with.

    Subclasses implement `combine`. State that must survive a restart (a generator, an EMA)
    goes through `state_dict` / `load_state_dict` as tensors and plain values only.
    """

    name: ClassVar[str] = ""
    #: True when `combine` reads the Gramian, so the caller can compute it once and share it.
    uses_gramian: ClassVar[bool] = False

    def __call__(
        self, matrix: Tensor, names: Sequence[str] | None = None, *, gram: Tensor | None = None
    ) -> Combined:
        """Combine the rows of a `[k, n]` matrix (one per loss group) into one `[n]` gradient.

        `names` label the rows; a combiner whose options name groups (`project`, `merge`)
        needs them, the others default to "0", "1", ... `gram`: `matrix @ matrix.T` in
        float64 if already computed.
        """
        if names is None:
            if self.group_names():
                raise ConfigError(f"combiner {self.name!r} names loss groups "
                                  f"{self.group_names()}: pass the rows' names, e.g. "
                                  f"combiner(matrix, {self.group_names()!r})")
            names = [str(i) for i in range(matrix.shape[0] if matrix.dim() else 0)]
        if matrix.dim() != 2 or matrix.shape[0] != len(names):
            raise ValueError(f"expected a [{len(names)}, n] matrix, got {tuple(matrix.shape)}")
        if self.uses_gramian and gram is None:
            gram = gramian(matrix)
        return self.combine(matrix, list(names), gram)

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        raise NotImplementedError

    def linear_weights(self, names: Sequence[str]) -> list[float] | None:
        """Fixed weights w when the output is always `w @ matrix`, else None.

        With fixed weights the matrix never needs to exist: one backward pass of the weighted
        loss sum gives the same gradient, which is how `sum` and `mean` cost nothing extra.
        """
        return None

    def group_names(self) -> list[str]:
        """Loss groups this combiner names in its options (checked against a recipe's groups
        before anything runs)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class GramianWeighting(Combiner):
    """A combiner whose output is `w @ matrix` with w chosen from the Gramian alone."""

    uses_gramian = True

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        assert gram is not None
        weights, info = self.weights(gram, names)
        return Combined(weighted_rows(weights, matrix, gram), info)

    def weights(self, gram: Tensor, names: list[str]) -> tuple[Tensor, dict[str, float]]:
        """float64 `[k]` weights for the rows, from the float64 `[k, k]` Gramian."""
        raise NotImplementedError


class DtypeAwareWeighting(GramianWeighting):
    """A `GramianWeighting` whose tolerances follow the input's dtype: a Gramian of float32
    rows carries float32 rounding even when held in float64. `weights` (a float64 Gramian
    alone) uses float64's."""

    def combine(self, matrix: Tensor, names: list[str], gram: Tensor | None) -> Combined:
        assert gram is not None
        weights, info = self.weights_for(gram, names, matrix.dtype)
        return Combined(weighted_rows(weights, matrix, gram), info)

    def weights(self, gram: Tensor, names: list[str]) -> tuple[Tensor, dict[str, float]]:
        return self.weights_for(gram, names, torch.float64)

    def weights_for(
        self, gram: Tensor, names: list[str], dtype: torch.dtype
    ) -> tuple[Tensor, dict[str, float]]:
        """float64 weights from the float64 Gramian of rows held in `dtype`."""
        raise NotImplementedError


class SeededDraws:
    """Mixin for combiners that draw random numbers: a seeded CPU generator whose state is
    the combiner's checkpointed state."""

    name: ClassVar[str]

    def _seed(self, seed: int) -> None:
        require(not isinstance(seed, bool) and isinstance(seed, int), self.name, "seed",
                "an integer", seed)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.generator.set_state(state["generator"])


def row_index(names: Sequence[str], group: str, *, role: str, combiner: str) -> int:
    """Position of `group` among the matrix rows, or a clear error naming what exists."""
    try:
        return list(names).index(group)
    except ValueError:
        raise ConfigError(
            f"combiner {combiner!r}: {role} group {group!r} is not among the loss groups "
            f"{list(names)}"
        ) from None


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool: what a numeric combiner option accepts."""
    return (
        not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    )


def require(ok: bool, combiner: str, option: str, expected: str, value: Any) -> None:
    """One `ConfigError` naming the combiner, the option and the value, unless `ok`."""
    if not ok:
        raise ConfigError(f"combiner {combiner!r}: {option} must be {expected}, got {value!r}")
