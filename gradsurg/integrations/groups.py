"""What the integrations share: reading `{group: loss}` from a model's or a hook's output."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from gradsurg.errors import ConfigError, GradsurgError


def as_loss_groups(value: Any, *, where: str) -> dict[str, Tensor]:
    """`value` as `{group: scalar loss}`, or an error saying what gradsurg expected."""
    if isinstance(value, Mapping) and value and all(
            isinstance(k, str) and isinstance(v, Tensor) and v.numel() == 1
            for k, v in value.items()):
        return dict(value)
    kind = type(value).__name__
    raise GradsurgError(f"{where} returned a {kind}; gradsurg needs a mapping of loss group "
                        "names to scalar losses, e.g. {'final': loss_final, 'sd': loss_sd}")


def refuse_multi_batch(combiner: Any, *, framework: str) -> None:
    """A combiner that needs several independent batches per optimizer step (`sdmgrad`,
    `modo`) cannot run where the framework hands over one batch per backward: refused in one
    line, rather than silently trained on one batch's rows."""
    if combiner.batches_per_step > 1:
        raise ConfigError(
            f"combiner {combiner.name!r} needs {combiner.batches_per_step} independent "
            f"batches per optimizer step, but {framework} hands gradsurg one batch per "
            "backward; use it in your own loop (surgery.backward([losses_1, losses_2, "
            "losses_3])) or a gradsurg recipe")


def total(groups: Mapping[str, Tensor]) -> Tensor:
    """The plain sum of the groups' losses (what a framework logs as "loss")."""
    values = list(groups.values())
    out = values[0]
    for value in values[1:]:
        out = out + value
    return out
