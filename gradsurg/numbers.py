"""One rule for every number a user gives: it must be finite.

A recipe key, a `--set` value, a combiner / policy / loss-term parameter or a command-line
option set to `.inf` or `.nan` is never meant: `epochs: .inf` trains forever, `lr: .inf` turns
the weights into NaN. The check walks a whole recipe (nested mappings and lists), so it covers
every float key of every program's schema, plugins' included, without a per-key copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

from gradsurg.errors import ConfigError

__all__ = ["check_finite_numbers", "non_finite_numbers"]


def non_finite_numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """`(dotted key path, value)` for each non-finite float inside `value`."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from non_finite_numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from non_finite_numbers(item, f"{path}[{index}]")


def check_finite_numbers(value: Any, *, source: str, kind: str = "key") -> None:
    """Raise a ConfigError naming the first non-finite number in `value` (from `source`)."""
    for path, number in non_finite_numbers(value):
        raise ConfigError(f"{source}: {kind} {path!r}: {number} is not allowed; allowed: a "
                          "finite number")
