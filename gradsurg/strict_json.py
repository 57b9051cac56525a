"""Strict JSON for every file gradsurg writes: NaN and infinity become null, never `NaN`.

Python's `json` writes `NaN` / `Infinity` by default, which no strict JSON reader accepts, and a
`NaN` accuracy in results.json reads like a number. Here a non-finite float is written as
`null` (the value is undefined, and whoever reads it must say so), and anything else that is not
JSON is an error instead of a silent repr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["dumps", "strict"]


def strict(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (mappings, lists, tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict(item) for item in value]
    return value


def dumps(value: Any, **options: Any) -> str:
    """`json.dumps` of `strict(value)` that refuses NaN / infinity (`allow_nan=False`)."""
    return json.dumps(strict(value), allow_nan=False, **options)
