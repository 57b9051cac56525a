"""The combiner contract (a `[k, n]` matrix of group gradients in, one `[n]` gradient out), the
binding of rows to group names, and the `COMBINERS` registry."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from gradsurg.combiners.gramian import gramian, weighted_rows
from gradsurg.errors import ConfigError
from gradsurg.registry import Registry


class Combined(NamedTuple):
    """A combiner's output: the gradient and per-step facts for logging (plain floats)."""

    gradient: Tensor
    info: dict[str, float]


C = TypeVar("C", bound="Combiner")


class Combiner:
    """Turns the per-group gradient matrix into the gradient the optimizer steps with.

    A combiner is told its rows' group names once (`bind`): options that name groups become
    row indices there, and state kept per group is re-keyed there, so `combine` works on row
    indices only. Subclasses implement `combine` (or `weights`, see `GramianWeighting`) and,
    when they keep per-group facts, `resolve`. State that must survive a restart (a
    generator, an EMA) goes through `state_dict` / `load_state_dict` as tensors and plain
    values only.
    """

    name: ClassVar[str] = ""
    #: True when `combine` reads the Gramian, so the caller can compute it once and share it.
    uses_gramian: ClassVar[bool] = False
    #: True when the output is exact on column shards given the whole rows' Gramian: each rank
    #: of an FSDP2 run combines its own columns (`gradsurg.engines`). Others are refused there.
    exact_on_shards: ClassVar[bool] = False
    #: Why not, said when FSDP2 refuses the combiner.
    shard_refusal: ClassVar[str] = ("its output is not a weighting of the rows chosen from "
                                    "their Gramian, so it needs whole rows on every rank.")
    #: Options that are combiner specs themselves (merge's `inner`, `then`): `COMBINERS.build`
    #: builds them first, each under its own key path (`combiner.inner`).
    nested: ClassVar[tuple[str, ...]] = ()
    #: Independent batches whose rows one step needs. Above 1 (`sdmgrad`, `modo`), the
    #: matrix stacks each batch's k rows in turn, `[batches_per_step * k, n]`, batch-major,
    #: and `names` still holds the k groups: such a method takes its weights from one batch's
    #: gradients against another's (an unbiased estimate needs independent draws) and its
    #: direction from a third. `Surgery.backward` then takes one loss mapping per batch.
    batches_per_step: ClassVar[int] = 1
    #: The loss group of each matrix row, from the last `bind` (None before the first).
    names: list[str] | None = None

    def bind(self: C, names: Sequence[str]) -> C:
        """Tell the combiner which loss group each row of its matrices holds.

        Called once when the groups are first known (and again only if they change); a group
        that the options name but `names` lacks is a `ConfigError` here, before any step.
        """
        names = list(names)
        if len(set(names)) != len(names):
            raise ConfigError(f"combiner {self.name!r}: loss group names repeat: {names}")
        self.resolve(names)
        self.names = names
        return self

    def resolve(self, names: list[str]) -> None:
        """Hook for `bind`: turn group names in the options into row indices, re-key state
        kept per group. `self.names` still holds the previous binding (or a loaded state's
        names) while it runs."""

    def __call__(
        self, matrix: Tensor, names: Sequence[str] | None = None, *, gram: Tensor | None = None
    ) -> Combined:
        """Combine the rows of a `[k, n]` matrix (one per loss group) into one `[n]` gradient
        (`[b * k, n]`, b batches' rows in turn, when `batches_per_step` is b > 1).

        `names` label the rows and bind the combiner when they differ from its binding;
        without them the binding stands, or rows are named "0", "1", ... (a combiner whose
        options name groups, `project` or `merge`, needs real names). `gram`:
        `matrix @ matrix.T` in float64 if already computed.

        A plain function of its input's values: no autograd graph is built, even when
        `matrix` requires grad (the output never does), and no state keeps one.
        """
        batches = self.batches_per_step
        rows = (matrix.shape[0] if matrix.dim() else 0) // batches
        if names is not None:
            if list(names) != self.names:
                self.bind(names)
        elif self.names is None or len(self.names) != rows:
            if self.group_names():
                raise ConfigError(f"combiner {self.name!r} names loss groups "
                                  f"{self.group_names()}: pass the rows' names, e.g. "
                                  f"combiner(matrix, {self.group_names()!r})")
            self.bind([str(i) for i in range(rows)])
        assert self.names is not None
        if matrix.dim() != 2 or matrix.shape[0] != batches * len(self.names):
            stacked = f"{batches} x " if batches > 1 else ""
            raise ValueError(f"expected a [{stacked}{len(self.names)}, n] matrix, got "
                             f"{tuple(matrix.shape)}")
        with torch.no_grad():
            matrix = matrix.detach()
            if gram is not None:
                gram = gram.detach()
            elif self.uses_gramian:
                gram = gramian(matrix)
            return self.combine(matrix, gram)

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        """The `[n]` gradient from the bound `[k, n]` matrix (row i is group `names[i]`)."""
        raise NotImplementedError

    def linear_weights(self) -> list[float] | None:
        """Fixed weights w, one per bound group, when the output is always `w @ matrix`.

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


class CombinerRegistry(Registry[type[Combiner]]):
    """The combiners' registry: `build` first builds the options that are combiner specs
    themselves (a class's `nested`), so their errors name their own key path."""

    def build(self, spec: Any, *args: Any, where: str, **context: Any) -> Any:
        if self.base is not None and isinstance(spec, self.base):
            return spec
        name, options = self.split(spec, where=where)
        factory = self.lookup(name, where=where)  # once: the nested check and the call
        nested = getattr(factory, "nested", ())
        options = {key: self.build(value, where=f"{where}.{key}") if key in nested else value
                   for key, value in options.items()}
        for key in nested:
            if key in options:
                refuse_multi_batch(options[key], inside=name, where=f"{where}.{key}")
        return self.call(factory, name, options, *args, where=where, **context)


COMBINERS = CombinerRegistry("combiner", "gradsurg.combiners", base=Combiner)
"""Combiners by recipe name; classes join with the bare `@COMBINERS.register`."""


class GramianWeighting(Combiner):
    """A combiner whose output is `w @ matrix` with w chosen from the Gramian alone (so it
    is exact on column shards: the same w on every rank, each rank's own columns)."""

    uses_gramian = True
    exact_on_shards = True

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        assert gram is not None
        weights, info = self.weights(gram)
        return Combined(weighted_rows(weights, matrix, gram), info)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        """float64 `[k]` weights for the rows, from the float64 `[k, k]` Gramian."""
        raise NotImplementedError


class DtypeAwareWeighting(GramianWeighting):
    """A `GramianWeighting` whose tolerances follow the input's dtype: a Gramian of float32
    rows carries float32 rounding even when held in float64. `weights` (a float64 Gramian
    alone) uses float64's."""

    def combine(self, matrix: Tensor, gram: Tensor | None) -> Combined:
        assert gram is not None
        weights, info = self.weights_for(gram, matrix.dtype)
        return Combined(weighted_rows(weights, matrix, gram), info)

    def weights(self, gram: Tensor) -> tuple[Tensor, dict[str, float]]:
        return self.weights_for(gram, torch.float64)

    def weights_for(self, gram: Tensor, dtype: torch.dtype) -> tuple[Tensor, dict[str, float]]:
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


def refuse_multi_batch(inner: Any, *, inside: str, where: str) -> None:
    """A combiner that needs several batches per step cannot run inside another (`merge`,
    `blockwise`, `cr_mogm`): their rows are one batch's."""
    if isinstance(inner, Combiner) and inner.batches_per_step > 1:
        raise ConfigError(f"{where}: combiner {inner.name!r} needs {inner.batches_per_step} "
                          f"batches per step and cannot run inside {inside!r}, whose rows "
                          "are one batch's; use it as the combiner itself")


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
