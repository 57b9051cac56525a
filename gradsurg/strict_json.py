"""Strict JSON for every file gradsurg writes and reads.

Writing: Python's `json` writes `NaN` / `Infinity` by default, which no strict JSON reader
accepts, and a `NaN` accuracy in results.json reads like a number. Here a non-finite float is
written as `null` (the value is undefined, and whoever reads it must say so), and anything else
that is not JSON is an error instead of a silent repr.

Reading (`load_file`, `loads`): the one reader for every JSON file or line gradsurg reads (run
results, model and tokenizer configs, JSONL input), bounded in size and nesting depth (a deeply
nested file is one error, not a RecursionError), refusing `NaN` / `Infinity`, and naming the
file (and line) in a one-line ConfigError.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradsurg.errors import ConfigError

__all__ = ["MAX_BYTES", "MAX_DEPTH", "dumps", "load_file", "loads", "strict"]

#: The largest JSON file gradsurg reads (a large tokenizer.json is tens of MB).
MAX_BYTES = 512 << 20
#: The deepest nesting a JSON document may have (gradsurg's own files use fewer than 10).
MAX_DEPTH = 100
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


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


def loads(text: str | bytes, *, source: str) -> Any:
    """Parse one JSON document from `source` (a file name, `file:line`); every problem is one
    ConfigError naming it: not UTF-8, nested deeper than `MAX_DEPTH`, not JSON, NaN/inf."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{source}: not UTF-8 (byte {error.start})") from None
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise ConfigError(f"{source}: JSON nested {depth} levels deep, more than the "
                          f"{MAX_DEPTH} gradsurg reads")

    def refuse(token: str) -> None:
        raise ConfigError(f"{source}: holds {token}, which is not JSON (a number that is not "
                          "finite)")

    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{source}: not valid JSON (line {error.lineno} column "
                          f"{error.colno}: {error.msg})") from None
    except RecursionError:  # a bound the depth scan did not see
        raise ConfigError(f"{source}: JSON nested too deep to read") from None


def load_file(path: str | os.PathLike[str]) -> Any:
    """`loads` of a file, refused unread when larger than `MAX_BYTES`; OSError propagates
    (the CLI names the path)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{path}: {size} bytes, more than the {MAX_BYTES} a JSON file "
                          "gradsurg reads may hold")
    return loads(path.read_bytes(), source=str(path))


def _depth(text: str) -> int:
    """The deepest bracket nesting outside strings (an upper bound on what json would
    recurse into; unbalanced text is json's to report)."""
    if "[" not in text and "{" not in text:
        return 0
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub("", text)):
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest
